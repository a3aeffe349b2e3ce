"""hubpilot_hub: the part of hubpilot that runs inside JupyterHub."""
