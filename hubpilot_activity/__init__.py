"""hubpilot_activity: a jupyter_server extension that reports the server as active while a
kernel is busy, so the hub's ``last_activity`` stays right and hubpilot's culler (which reads
only the hub) keeps servers running a long, silent computation.

Why: jupyter_server's activity is the latest of its ``*_last_activity`` settings, API requests
and kernel messages. A cell that computes for hours without output sends no message after its
``busy`` status, so the server looks idle and would be culled mid-computation. This extension
sets ``web_app.settings["hubpilot_busy_last_activity"]`` to "now" every ``interval`` seconds
while any kernel's ``execution_state`` is ``busy`` or a terminal runs a command in the
foreground (a silent ``python train.py`` in a terminal is as busy as a cell); jupyterhub-singleuser
then sends it to the hub on its next activity report (``JUPYTERHUB_ACTIVITY_URL``, every
``JUPYTERHUB_ACTIVITY_INTERVAL`` seconds). Nothing probes the server from outside, so a
server that is really idle stays idle.

A kernel blocked on ``input()`` is ``busy`` too, until someone answers: a GPU server whose cell
waits for input with its tab closed would be kept for ever. The kernel's ``input_request`` goes
to the frontend over the websocket's stdin channel, which jupyter_server's kernel manager never
sees; so the extension subclasses the server's kernel websocket connection class (the
``kernel_websocket_connection_class`` web_app setting, read at each websocket's opening) to see
the ``input_request`` pass and a frontend's ``input_reply`` come back, and watches each such
kernel's IOPub status messages (``InputWatch``). A busy kernel whose current execution asked
for input that nobody answered only waits, and does not count as busy. Any later status of
another execution (a new cell, a restart) or of that one (it ended, was interrupted) ends the
waiting; whatever the extension cannot tell counts as busy, as before.

Install in the user image next to jupyterhub-singleuser and enable with
``jupyter server extension enable hubpilot_activity`` (or
``c.ServerApp.jpserver_extensions = {"hubpilot_activity": True}``). The check interval comes
from ``HUBPILOT_ACTIVITY_CHECK_SECONDS`` (default 60; keep it below the hub activity interval; a
value that is no number of seconds above 0 is a warning at load, and 60; one below 0.1 or above
3600 is a warning at load, and that bound).
Standard library and jupyter_server only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

SETTING = "hubpilot_busy_last_activity"
INPUT_WATCH = "hubpilot_input_watch"  # web_app setting: the server's InputWatch
DEFAULT_CHECK_SECONDS = 60.0
#: a shorter check keeps the server's event loop running it without pause (a shorter value is
#: brought up to this one, a longer one than MAX_CHECK_SECONDS down to that)
MIN_CHECK_SECONDS = 0.1
#: the largest ``cull.activity_check_seconds`` hubpilot accepts: a longer check could not be
#: described in hubpilot's settings, whose timeouts must exceed the activity lag it adds
MAX_CHECK_SECONDS = 3600.0
#: jupyter_server's own list of message types that are no user activity (used when its kernel
#: manager has no ``track_message_type``): a status answering one of them is not an execution's
UNTRACKED = frozenset({
    "comm_info_request", "kernel_info_request", "shutdown_request", "interrupt_request",
    "debug_request", "usage_request", "input_request", "input_reply",
})


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "hubpilot_activity"}]


class InputWatch:
    """Which kernels only wait for an answer to ``input()``.

    Per kernel (once a websocket has opened to it): the latest status message of an execution
    seen on its IOPub, as (parent msg_id, execution_state), from a subscription of its own; and
    the parent msg_id of an ``input_request`` nobody has answered. A kernel waits for input
    while that request belongs to the execution the kernel is busy with."""

    def __init__(self, tracked: Callable[[str | None], bool] | None = None) -> None:
        self._tracked = tracked or (lambda msg_type: msg_type not in UNTRACKED)
        self.status: dict[str, tuple[str | None, str]] = {}
        self.asking: dict[str, str] = {}
        self._streams: dict[str, tuple[Any, list[int]]] = {}

    def watch(self, kernel_id: str, kernel: Any) -> None:
        """Subscribe to the kernel's IOPub (again, if a restart gave it new ports)."""
        ports = list(getattr(kernel, "ports", []))
        known = self._streams.get(kernel_id)
        if known is not None and known[1] == ports:
            return
        self.forget(kernel_id)
        from jupyter_client.session import Session

        session = Session(config=kernel.session.config, key=kernel.session.key)
        stream = kernel.connect_iopub()
        stream.on_recv(lambda msg_list: self._on_iopub(kernel_id, session, msg_list))
        self._streams[kernel_id] = (stream, ports)

    def _on_iopub(self, kernel_id: str, session: Any, msg_list: list[bytes]) -> None:
        try:
            _, fed = session.feed_identities(msg_list)
            msg = session.deserialize(fed, content=False)
            if msg["header"]["msg_type"] != "status":
                return
            parent = msg.get("parent_header") or {}
            if parent and not self._tracked(parent.get("msg_type")):
                return  # kernel_info, comm_info, debug...: answered beside the execution
            state = session.deserialize(fed)["content"]["execution_state"]
            self.status[kernel_id] = (parent.get("msg_id"), str(state))
        except Exception:  # unreadable: the kernel's state is unknown, so it counts as busy
            self.status.pop(kernel_id, None)
        if kernel_id in self.asking and self.status.get(kernel_id) != (self.asking[kernel_id], "busy"):
            del self.asking[kernel_id]  # that execution ended, or another one runs

    def asked(self, kernel_id: str, parent_id: str | None) -> None:
        """An ``input_request`` of the execution ``parent_id`` went to a frontend (its busy
        status may reach the subscription later: stdin and IOPub are two sockets)."""
        if parent_id:
            self.asking[kernel_id] = parent_id

    def answered(self, kernel_id: str) -> None:
        """A frontend sent the kernel an ``input_reply``."""
        self.asking.pop(kernel_id, None)

    def waiting(self, kernel_id: str, kernel: Any = None) -> bool:
        parent_id = self.asking.get(kernel_id)
        if parent_id is None or self.status.get(kernel_id) != (parent_id, "busy"):
            return False
        known = self._streams.get(kernel_id)
        # a restart with new ports: this subscription hears nothing of the new kernel
        return kernel is None or known is None or known[1] == list(getattr(kernel, "ports", []))

    def forget(self, kernel_id: str) -> None:
        known = self._streams.pop(kernel_id, None)
        if known is not None and not known[0].closed():
            known[0].close()
        self.status.pop(kernel_id, None)
        self.asking.pop(kernel_id, None)

    def keep_only(self, kernel_ids: Iterable[str]) -> None:
        """Forget the kernels that are gone."""
        for kernel_id in set(self._streams) - set(kernel_ids):
            self.forget(kernel_id)


def busy_kernels(kernel_manager: Any, input_watch: InputWatch | None = None) -> list[str]:
    """Ids of the kernels whose last status message said ``busy``, except those that only wait
    for an answer to ``input()`` (``input_watch``)."""
    busy = []
    kernel_ids = list(kernel_manager.list_kernel_ids())
    for kernel_id in kernel_ids:
        try:
            kernel = kernel_manager.get_kernel(kernel_id)
        except KeyError:  # shut down meanwhile
            continue
        if getattr(kernel, "execution_state", None) != "busy":
            continue
        if input_watch is not None and input_watch.waiting(kernel_id, kernel):
            continue
        busy.append(kernel_id)
    if input_watch is not None:
        input_watch.keep_only(kernel_ids)
    return busy


def busy_terminals(terminal_manager: Any) -> list[str]:
    """Names of the terminals running a command in the foreground: the terminal's foreground
    process group is not its shell's (the shell at its prompt is its own foreground group)."""
    busy = []
    for name, term in list(getattr(terminal_manager, "terminals", {}).items()):
        try:
            proc = term.ptyproc
            if os.tcgetpgrp(proc.fd) != os.getpgid(proc.pid):
                busy.append(name)
        except (AttributeError, OSError):  # closed meanwhile, or not a pty terminal
            continue
    return busy


def mark_if_busy(web_app: Any, now: datetime | None = None) -> bool:
    """Record activity "now" when a kernel is busy or a terminal runs a command; True if it did."""
    if not busy_kernels(web_app.settings["kernel_manager"], web_app.settings.get(INPUT_WATCH)) and not busy_terminals(
        web_app.settings.get("terminal_manager")
    ):
        return False
    web_app.settings[SETTING] = now or datetime.now(timezone.utc)  # noqa: UP017 (any Python 3)
    return True


def check_seconds(warn: Callable[[str], Any] | None = None) -> float:
    """The check interval: ``HUBPILOT_ACTIVITY_CHECK_SECONDS``, or 60 when unset; a value that is
    no finite number of seconds above 0 (``30s``, ``0``, ``inf``: a check that never runs) is
    60 too; a number below 0.1 s (a check without pause) is 0.1, one above 3600 s (more than
    hubpilot's ``cull.activity_check_seconds`` can say) is 3600. ``warn`` is told what to fix."""
    raw = os.environ.get("HUBPILOT_ACTIVITY_CHECK_SECONDS", "")
    if not raw.strip():
        return DEFAULT_CHECK_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value > 0:
        if MIN_CHECK_SECONDS <= value <= MAX_CHECK_SECONDS:
            return value
        bound = MIN_CHECK_SECONDS if value < MIN_CHECK_SECONDS else MAX_CHECK_SECONDS
        if warn is not None:
            warn(f"hubpilot_activity: HUBPILOT_ACTIVITY_CHECK_SECONDS={raw!r} is outside "
                 f"{MIN_CHECK_SECONDS:g}..{MAX_CHECK_SECONDS:g} s (below, the check runs without pause; above, "
                 f"hubpilot's cull.activity_check_seconds cannot match it); busy kernels are checked every "
                 f"{bound:g} s")
        return bound
    if warn is not None:
        warn(f"hubpilot_activity: HUBPILOT_ACTIVITY_CHECK_SECONDS={raw!r} is not a number of seconds above 0 "
             f"(e.g. 60); busy kernels are checked every {DEFAULT_CHECK_SECONDS:.0f} s")
    return DEFAULT_CHECK_SECONDS


def _incoming_channel(message: Any, protocol: str | None) -> str | None:
    """The channel of a frontend's websocket message (JSON, or the binary v1 protocol)."""
    try:
        if protocol == "v1.kernel.websocket.jupyter.org":
            from jupyter_server.services.kernels.connection.base import deserialize_msg_from_ws_v1

            channel = deserialize_msg_from_ws_v1(message)[0]  # type: ignore[no-untyped-call]
        elif isinstance(message, bytes):
            from jupyter_server.services.kernels.connection.base import deserialize_binary_message

            channel = deserialize_binary_message(message).get("channel")  # type: ignore[no-untyped-call]
        else:
            channel = json.loads(message).get("channel")
    except Exception:  # not ours to judge: jupyter_server answers a malformed message itself
        return None
    return channel if isinstance(channel, str) else None


def watch_input_requests(base: type, watch: InputWatch) -> type:
    """A subclass of the kernel websocket connection class ``base`` that tells ``watch`` when a
    kernel asks its frontend for input (the only message a kernel sends on stdin is an
    ``input_request``) and when a frontend answers (the only one a frontend sends on stdin is an
    ``input_reply``)."""

    class InputWatchingConnection(base):  # type: ignore[misc]
        def connect(self) -> Any:
            try:
                watch.watch(self.kernel_id, self.kernel_manager)
            except Exception:  # never refuse a connection over activity bookkeeping
                self.log.exception("hubpilot_activity: cannot watch kernel %s", self.kernel_id)
            return super().connect()

        def handle_outgoing_message(self, stream: Any, outgoing_msg: Any) -> None:
            channel = stream if isinstance(stream, str) else getattr(stream, "channel", None)
            if channel == "stdin":
                try:
                    _, fed = self.session.feed_identities(outgoing_msg)
                    parent = self.session.deserialize(fed, content=False).get("parent_header") or {}
                    watch.asked(self.kernel_id, parent.get("msg_id"))
                except Exception:  # unreadable: not known to wait, so it stays busy
                    self.log.debug("hubpilot_activity: unreadable input_request", exc_info=True)
            super().handle_outgoing_message(stream, outgoing_msg)

        def handle_incoming_message(self, incoming_msg: Any) -> None:
            if _incoming_channel(incoming_msg, self.subprotocol) == "stdin":
                watch.answered(self.kernel_id)
            super().handle_incoming_message(incoming_msg)

    InputWatchingConnection.__name__ = InputWatchingConnection.__qualname__ = f"InputWatching{base.__name__}"
    return InputWatchingConnection


def _watch_input(web_app: Any) -> bool:
    """Put the input-watching connection class over the server's own (a ZMQ one; a gateway's
    kernels run elsewhere and are left as they are). True if it did."""
    try:
        from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
    except ImportError:  # a jupyter_server before 2.0
        return False
    base = web_app.settings.get("kernel_websocket_connection_class")
    if not isinstance(base, type) or not issubclass(base, ZMQChannelsWebsocketConnection):
        return False
    tracked = getattr(web_app.settings.get("kernel_manager"), "track_message_type", None)
    watch = InputWatch(tracked if callable(tracked) else None)
    web_app.settings[INPUT_WATCH] = watch
    web_app.settings["kernel_websocket_connection_class"] = watch_input_requests(base, watch)
    return True


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from tornado.ioloop import PeriodicCallback

    web_app = serverapp.web_app
    interval = check_seconds(serverapp.log.warning)
    if not _watch_input(web_app):
        serverapp.log.info("hubpilot_activity: a kernel waiting for input counts as busy (the "
                           "kernel websocket connection class is not jupyter_server's ZMQ one)")

    def tick() -> None:
        try:
            mark_if_busy(web_app)
        except Exception:  # never take the server down over activity bookkeeping
            serverapp.log.exception("hubpilot_activity: busy-kernel check failed")

    callback = PeriodicCallback(tick, interval * 1000)
    callback.start()
    web_app.settings["hubpilot_activity_callback"] = callback
    serverapp.log.info("hubpilot_activity: busy kernels count as activity (checked every %g s)", interval)


load_jupyter_server_extension = _load_jupyter_server_extension
