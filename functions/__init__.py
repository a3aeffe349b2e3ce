"""Azure Functions blueprints of hubpilot (registered on the one FunctionApp in function_app.py).

Importing this package is cheap: the settings, the state store and the SDKs are loaded on the
first invocation, and the process keeps one :class:`hubpilot.wiring.Context` for every trigger.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hubpilot.wiring import Context

_context: Context | None = None


def get_context() -> Context:
    """The process's Context, built from the app settings (``HUBPILOT_...``) on first use."""
    global _context
    if _context is None:
        from hubpilot.settings import load_settings
        from hubpilot.wiring import build_context

        _context = build_context(load_settings())
    return _context


def set_context(ctx: Context | None) -> None:
    """Use this Context for every trigger of the process (tests; None forgets it)."""
    global _context
    _context = ctx
