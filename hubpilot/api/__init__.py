"""The admin HTTP API (ASGI), served by the Azure Functions host and by ``hubpilot serve``."""
