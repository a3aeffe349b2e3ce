"""hubpilot: keeps a JupyterHub in step with its directory, its GPU pool and its idle servers."""

__version__ = "0.1.0"
