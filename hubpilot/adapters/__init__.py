"""Adapters: the outside world behind the port protocols."""
