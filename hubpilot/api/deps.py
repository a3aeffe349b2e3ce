"""FastAPI dependencies shared by every router of the admin API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Request

from hubpilot.wiring import Context

ContextSource = Context | Callable[[], Context]


class ContextHolder:
    """Builds the :class:`Context` once, on first use (the Functions host builds it lazily)."""

    def __init__(self, source: ContextSource) -> None:
        self._source = source
        self._context: Context | None = source if isinstance(source, Context) else None

    @property
    def built(self) -> Context | None:
        return self._context

    def get(self) -> Context:
        if self._context is None:
            source = self._source
            assert not isinstance(source, Context)
            self._context = source()
        return self._context


def context_of(app: Any) -> Context:
    """The Context of an app built by :func:`hubpilot.api.app.create_app`."""
    holder: ContextHolder = app.state.context_holder
    ctx = holder.get()
    app.state.context = ctx
    return ctx


def get_context(request: Request) -> Context:
    """FastAPI dependency: the process's :class:`Context` (``app.state.context``)."""
    return context_of(request.app)
