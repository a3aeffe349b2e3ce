"""FastAPI dependencies shared by every router of the admin API."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request

from hubpilot.settings import SettingsError
from hubpilot.wiring import Context

log = logging.getLogger(__name__)

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
    """The Context of an app built by :func:`hubpilot.api.app.create_app`.

    Invalid settings (found when the Context is first built, e.g. on a Functions cold start)
    answer 503 to every request; what is wrong goes to the log, not to anonymous callers.
    """
    holder: ContextHolder = app.state.context_holder
    try:
        ctx = holder.get()
    except SettingsError as exc:
        log.error("hubpilot cannot start: %s", exc)
        raise HTTPException(503, "hubpilot is not configured correctly; the log says what to fix") from None
    app.state.context = ctx
    return ctx


def get_context(request: Request) -> Context:
    """FastAPI dependency: the process's :class:`Context` (``app.state.context``)."""
    return context_of(request.app)
