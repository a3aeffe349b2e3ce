"""Port types: the protocols and plain data types that the core needs from the outside world.

Adapters (``hubpilot.adapters``) implement these and import nothing else of the core.
"""
