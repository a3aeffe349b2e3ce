"""Sections of the settings model, one module each; :mod:`hubpilot.settings` composes them."""
