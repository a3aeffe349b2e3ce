"""Adapters: the ports (``hubpilot.ports``) implemented against real services.

Each adapter takes plain constructor arguments (URLs, tokens, limits) and imports only the
core's port types; the wiring (``hubpilot.wiring``) builds them from settings.
"""
