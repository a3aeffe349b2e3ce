"""The GPU demand signal: a pre-spawn part that tells hubpilot a GPU server is starting.

When a user starts a GPU profile, the part POSTs ``{user, server, profile}`` to hubpilot's
``/api/v1/scale/demand`` (role ``hub``) so the GPU pool grows within a second instead of at the
next scale timer. It never blocks the spawn: the request is sent in the background and any
failure is logged, nothing more. In ``jupyterhub_config.py``, after ``hubpilot_hub.configure``::

    from hubpilot_hub.scale_demand import configure_scale_demand
    configure_scale_demand(c, url="https://hubpilot.example.org/api/v1", token=os.environ["HUBPILOT_DEMAND_TOKEN"],
                           gpu_profiles=["gpu-t4"], gpu_start_timeout=1200)

``gpu_start_timeout`` raises the start timeout of the GPU profiles above the node boot time, so
that a spawn waiting for a new GPU node does not time out (:func:`configure_gpu_start_timeout`,
which a deployment without the demand signal calls on its own). JupyterHub waits
``spawner.start_timeout`` as read right after the pre-spawn hook, before ``start()`` runs, while
KubeSpawner applies a profile's ``kubespawner_override`` inside ``start()``: an override alone
would only lengthen KubeSpawner's own wait for the pod. So a pre-spawn part sets the timeout on
the spawner of each GPU spawn (and puts the configured one back for the others), and the GPU
profiles' overrides are raised too.

Which spawn is a GPU spawn: for the same reason the spawner's ``extra_resource_limits`` do not
show the profile yet when the hook runs, so the profile is resolved from KubeSpawner's
``profile_list`` (a list, a dict — its values sorted by key —, or a callable called as
KubeSpawner calls it) the way KubeSpawner resolves it: ``user_options["profile"]`` is a slug
(KubeSpawner slugifies the display name of a profile without one); no profile asked for means
the profile marked ``default``, else the first. It is a GPU spawn when that profile's slug or
display name is in ``gpu_profiles``, or when its ``kubespawner_override`` — or that of a
``profile_options`` choice it uses (a free-form value in ``user_options["<option>--unlisted-choice"]``
means the option's ``unlisted_choice``, with ``{value}`` filled in; else the choice
``user_options["<option>"]`` names; else the option's default choice) — asks for
``nvidia.com/gpu`` in ``extra_resource_limits`` or ``extra_resource_guarantees``; or when the
spawner itself already does (its configuration, ``group_overrides``). These are combined as
KubeSpawner applies them: each override's dict is merged into the spawner's, the profile's first,
then its choices' (a later count of 0, or a null that removes the key, takes the GPU away), and
an override value that is callable is called with the spawner.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from traitlets.config import Config

from hubpilot_hub import hooks

log = logging.getLogger(hooks.LOGGER)

PART_NAME = "gpu-demand"
START_TIMEOUT_PART_NAME = "gpu-start-timeout"
#: seconds the parts wait for a callable ``profile_list``: JupyterHub bounds ``start()`` (where
#: KubeSpawner calls it) by ``start_timeout``, but not the pre-spawn hook
RESOLVE_TIMEOUT = 10.0


def _profile_of(spawner: Any) -> str:
    options = getattr(spawner, "user_options", None) or {}
    return str(options.get("profile", "") or "")


def _slugify(name: str) -> str:
    """KubeSpawner's slug for a profile without one (python-slugify, when the hub has it)."""
    try:
        from slugify import slugify  # KubeSpawner's own dependency

        return str(slugify(name))
    except ImportError:  # the same for ASCII names
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
        return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")


def _slug(profile: dict[str, Any]) -> str:
    # KubeSpawner generates a slug only for a profile without the key
    if "slug" in profile:
        return str(profile["slug"])
    return _slugify(str(profile.get("display_name", "")))


def _profiles(profile_list: Any) -> list[Any] | None:
    """The profiles of a ``profile_list`` in KubeSpawner's order: a list as it is, a dict's values
    sorted by their keys (KubeSpawner's ``_sorted_dict_values``); None for anything else."""
    if isinstance(profile_list, list):
        return profile_list
    if isinstance(profile_list, dict):
        try:
            return [profile_list[k] for k in sorted(profile_list)]
        except TypeError:  # keys of mixed types: KubeSpawner would fail; keep them all
            return list(profile_list.values())
    return None


def _formatted(override: Any, value: str) -> Any:
    """An ``unlisted_choice`` override with ``{value}`` filled in, as KubeSpawner's
    ``recursive_format`` does (a string it cannot format is kept as it is)."""
    if isinstance(override, dict):
        return {k: _formatted(v, value) for k, v in override.items()}
    if isinstance(override, list):
        return [_formatted(v, value) for v in override]
    if isinstance(override, str):
        try:
            return override.format(value=value)
        except (KeyError, IndexError, ValueError):
            return override
    return override


def _asks_for(override: Any, resource: str) -> bool:
    """True when a ``kubespawner_override`` asks for ``resource`` (a count other than 0)."""
    if not isinstance(override, dict):
        return False
    return any(_counts(override.get(attr), resource) for attr in _RESOURCE_ATTRS)


_RESOURCE_ATTRS = ("extra_resource_limits", "extra_resource_guarantees")


def _counts(amounts: Any, resource: str) -> bool:
    """True when ``amounts`` (a resource → count dict) holds a count of ``resource`` other than 0."""
    return (isinstance(amounts, dict) and amounts.get(resource) is not None
            and str(amounts[resource]).strip() not in ("0", ""))


def _merged(current: Any, new: Any) -> Any:
    """``current`` with an override's ``new`` value applied as KubeSpawner's ``_apply_overrides``
    applies it: a dict is merged into a dict (recursively; a None value removes the key), any
    other value replaces it."""
    if not (isinstance(new, dict) and isinstance(current, dict)):
        return new
    out = dict(current)
    for k, v in new.items():
        if isinstance(v, dict):
            out[k] = _merged(out.get(k) if isinstance(out.get(k), dict) else {}, v)
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def _asked(spawner: Any, overrides: list[Any], resource: str) -> bool:
    """True when the spawner, once KubeSpawner has applied ``overrides`` in their order (the
    profile's, then its choices'), asks for ``resource``: an override's dict is merged into the
    spawner's own (its configuration, ``group_overrides``) — a later 0 or None takes an earlier
    count away — and a callable override value is called with the spawner, as KubeSpawner does."""
    for attr in _RESOURCE_ATTRS:
        amounts = getattr(spawner, attr, None) or {}
        for override in overrides:
            if isinstance(override, dict) and attr in override:
                value = override[attr]
                amounts = _merged(amounts, value(spawner) if callable(value) else value)
        if _counts(amounts, resource):
            return True
    return False


def _chosen_profile(profile_list: list[Any], slug: str) -> dict[str, Any] | None:
    """The profile KubeSpawner applies: the one whose slug (or slugified display name) is
    ``slug``, else — no profile asked for — the one marked ``default``, else the first."""
    profiles = [p for p in profile_list if isinstance(p, dict)]
    if not profiles:
        return None
    if slug:
        return next((p for p in profiles if _slug(p) == slug), None)
    return next((p for p in profiles if p.get("default")), profiles[0])


def _chosen_overrides(profile: dict[str, Any], options: dict[str, Any]) -> list[Any]:
    """The ``kubespawner_override`` of each ``profile_options`` choice the spawn uses, as
    KubeSpawner's ``_load_profile`` picks it: a free-form value in
    ``user_options["<option>--unlisted-choice"]`` (what the form sends for "Other...") means the
    option's ``unlisted_choice`` override with ``{value}`` filled in; else the choice
    ``user_options["<option>"]`` names; else the option's default choice, else its first."""
    out = []
    profile_options = profile.get("profile_options")
    for name, option in (profile_options.items() if isinstance(profile_options, dict) else ()):
        if not isinstance(option, dict):
            continue
        choices = option.get("choices") if isinstance(option.get("choices"), dict) else {}
        unlisted_value = options.get(f"{name}--unlisted-choice")
        chosen = options.get(name)
        if unlisted_value:
            unlisted = option.get("unlisted_choice")
            override = unlisted.get("kubespawner_override") if isinstance(unlisted, dict) else None
            out.append(_formatted(override, str(unlisted_value)))
        elif isinstance(chosen, str) and chosen in choices:
            choice = choices[chosen]
            out.append(choice.get("kubespawner_override") if isinstance(choice, dict) else None)
        elif choices:
            default = next((c for c in choices.values() if isinstance(c, dict) and c.get("default")),
                           next(iter(choices.values())))
            out.append(default.get("kubespawner_override") if isinstance(default, dict) else None)
    return out


def _classify(spawner: Any, profile_list: Any, profiles: frozenset[str], resource: str) -> tuple[bool, str]:
    """(is this spawn a GPU spawn, the profile's slug).

    KubeSpawner applies the chosen profile's ``kubespawner_override`` (and its
    ``profile_options`` choices) inside ``start()``, after the pre-spawn hook: the spawner's
    ``extra_resource_limits`` do not show them yet, so the profile is resolved here the way
    KubeSpawner will resolve it, and a profile counts as GPU when its slug or display name is in
    ``profiles`` or the spawner, with its override and those of the choices it uses merged in as
    KubeSpawner merges them, asks for ``resource``."""
    slug = _profile_of(spawner)
    profile_list = _profiles(profile_list)
    profile = _chosen_profile(profile_list, slug) if profile_list else None
    if profile is None:  # no profiles; or an unknown slug, which KubeSpawner refuses: by name alone
        return slug in profiles or _asked(spawner, [], resource), slug
    slug = _slug(profile)
    options = getattr(spawner, "user_options", None) or {}
    overrides = [profile.get("kubespawner_override"), *_chosen_overrides(profile, options)]
    gpu = (slug in profiles or str(profile.get("display_name", "")) in profiles
           or _asked(spawner, overrides, resource))
    return gpu, slug


class _NoAnswer(Exception):
    """A callable ``profile_list`` did not answer within the resolve timeout."""


async def _call_profile_list(spawner: Any, profile_list: Any, resolve_timeout: float | None) -> Any:
    result = profile_list(spawner)
    if inspect.isawaitable(result):
        try:
            result = await asyncio.wait_for(result, resolve_timeout)
        except TimeoutError:
            log.warning("hubpilot: the profile_list of %s did not answer within %s s; taken as a GPU "
                        "spawn", getattr(spawner, "_log_name", "?"), resolve_timeout)
            raise _NoAnswer from None
    return result


async def _resolved_profile_list(spawner: Any, profile_list: Any, resolve_timeout: float | None) -> Any:
    """The answer of a callable ``profile_list``, called once per run of the composed pre-spawn
    hook: the parts of one spawn share it (a synchronous callable holds the hub's event loop while
    it runs, as in KubeSpawner's own call in ``start()``; it is not called once more per part)."""
    shared = hooks.run_shared()
    if shared is None:
        return await _call_profile_list(spawner, profile_list, resolve_timeout)
    key = ("profile_list", id(spawner))
    pending = shared.get(key)
    if pending is None:
        pending = shared[key] = asyncio.get_running_loop().create_future()
        try:
            result = await _call_profile_list(spawner, profile_list, resolve_timeout)
        except asyncio.CancelledError:
            pending.cancel()
            raise
        except BaseException as exc:
            pending.set_exception(exc)
            pending.exception()  # retrieved: the other parts that wait for it get it too
            raise
        pending.set_result(result)
        return result
    return await asyncio.shield(pending)


async def gpu_spawn(spawner: Any, profiles: frozenset[str], resource: str = "nvidia.com/gpu",
                    resolve_timeout: float | None = None) -> tuple[bool, str]:
    """(GPU spawn?, profile slug) for ``spawner``, calling a callable ``profile_list`` as
    KubeSpawner does (``profile_list(spawner)``, maybe async), once for all the parts of one
    pre-spawn run. A callable that does not answer within ``resolve_timeout`` seconds counts as a
    GPU spawn (a longer wait, or a signal too many, never a GPU spawn missed), and is logged."""
    profile_list = getattr(spawner, "profile_list", None)
    if callable(profile_list):
        try:
            profile_list = await _resolved_profile_list(spawner, profile_list, resolve_timeout)
        except _NoAnswer:
            return True, _profile_of(spawner)
    return _classify(spawner, profile_list, profiles, resource)


class ScaleDemand:
    """The pre-spawn part. ``url`` is hubpilot's API base (ending in ``/api/v1``).

    The request never touches the hub's own HTTP client: JupyterHub sends its proxy API calls
    and its server readiness checks through tornado's shared ``AsyncHTTPClient``, which runs at
    most 10 requests at once and queues the rest, so signals held open by a hung hubpilot would
    stall every spawn of the hub (also CPU ones) until they time out. This part has its own
    client (``max_in_flight`` connections; ``timeout`` seconds bound the connection, the answer
    and, with tornado's default client, the wait for a free connection). A failure is logged
    once as a warning, further ones at debug level until a signal gets through again (logged as
    info)."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        gpu_profiles: Sequence[str] = (),
        gpu_resource: str = "nvidia.com/gpu",
        timeout: float = 5.0,
        is_gpu: Callable[[Any], bool] | None = None,
        max_in_flight: int = 10,
    ) -> None:
        given = urlsplit(url)
        # as errors show it: without a user:password@ it may carry
        shown = urlunsplit(given._replace(netloc=given.netloc.rpartition("@")[2]))
        if any(c <= " " or c == "\x7f" for c in url):
            # a Secret file's trailing newline or a stray space: refused, not guessed at (a space in the
            # path breaks the request line, and the URL the logs show would not be the one used)
            raise ValueError(f"scale demand url {shown.strip()!r} holds a space, a line break or another control "
                             "character (often the trailing newline of the file a Kubernetes Secret was made "
                             "from): give the URL alone")
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"scale demand url {shown!r} must be an http(s) URL of hubpilot's /api/v1")
        if given.query or given.fragment or url.endswith(("?", "#")):
            # /scale/demand is appended to the whole url: it would land in the query or fragment
            raise ValueError(f"scale demand url {shown!r} has a query or fragment (?... or #...), after which "
                             "/scale/demand would be appended: give hubpilot's API base alone, ending in /api/v1")
        if "@" in given.netloc:
            # tornado sends it as Basic authentication in place of the token: hubpilot would refuse
            # every signal (401)
            raise ValueError(f"scale demand url {shown!r} holds a user name or password (user:password@), which "
                             "would be sent in place of the demand token: remove it (hubpilot's API takes the "
                             "token alone; the user name and password are not shown)")
        if given.path.rstrip("/").endswith("/scale/demand"):
            # the part appends /scale/demand: every signal would go to .../scale/demand/scale/demand (404)
            raise ValueError(f"scale demand url {shown!r} is the demand endpoint itself; give hubpilot's API base, "
                             "ending in /api/v1 (the Bicep output demandUrl without /scale/demand): "
                             "/scale/demand is appended to it")
        if not token:
            raise ValueError("scale demand token is empty: give a token of hubpilot's `hub` API role "
                             "(or leave the demand signal off)")
        if any(c < " " or c == "\x7f" for c in token):
            # tornado refuses such a header and quotes it, token and all, in the error the hub logs
            raise ValueError("scale demand token holds a line break or another control character, which no HTTP "
                             "header can carry (often the trailing newline of the file a Kubernetes Secret was "
                             "made from): give the token alone (the value is not shown)")
        if not (isinstance(timeout, (int, float)) and 0 < timeout <= 60):
            # tornado takes a timeout of 0 as "none": a hung hubpilot would hold the request forever
            raise ValueError(f"scale demand timeout {timeout!r} must be a number of seconds in (0, 60]")
        if not (isinstance(max_in_flight, int) and max_in_flight > 0):
            raise ValueError(f"scale demand max_in_flight {max_in_flight!r} must be a positive integer")
        _check_profiles(gpu_profiles)
        self.endpoint = url.rstrip("/") + "/scale/demand"
        # as the logs show it: without a user:password@ the url may carry
        parts = urlsplit(self.endpoint)
        self._shown_endpoint = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.token = token
        self.gpu_profiles = frozenset(gpu_profiles)
        self.gpu_resource = gpu_resource
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._is_gpu = is_gpu
        self.resolve_timeout = RESOLVE_TIMEOUT
        self._client: Any = None
        self._failures = 0  # failed signals since the last one that got through
        self._unreadable = 0  # spawns whose spawner could not be read
        self._tasks: set[asyncio.Future[Any]] = set()
        self.sent: list[tuple[float, str, int | None]] = []  # (monotonic time, key, status)

    def __call__(self, spawner: Any) -> None:
        """Schedule the signal and return at once (the spawn never waits for hubpilot)."""
        task = asyncio.ensure_future(self._signal(spawner))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _signal(self, spawner: Any) -> None:
        try:
            if self._is_gpu is not None:
                gpu, profile = bool(self._is_gpu(spawner)), _profile_of(spawner)
            else:
                gpu, profile = await gpu_spawn(spawner, self.gpu_profiles, self.gpu_resource,
                                               self.resolve_timeout)
            body = {"user": spawner.user.name, "server": getattr(spawner, "name", "") or "",
                    "profile": profile} if gpu else None
        except Exception as exc:
            # the same configuration error would otherwise log a traceback at every spawn
            if not self._unreadable:
                log.exception("hubpilot gpu-demand: cannot read the spawner of %s; no signal sent (the "
                              "next such errors are logged at debug level until a spawner is read again)",
                              getattr(spawner, "_log_name", "?"))
            else:
                log.debug("hubpilot gpu-demand: cannot read the spawner: %s", exc)
            self._unreadable += 1
            return
        if self._unreadable:
            # as for failed signals: the next error (a profile service down again, another cause)
            # is logged in full again, not at debug level for good
            log.info("hubpilot gpu-demand: the spawner of %s was read again (%d spawn(s) could not be read "
                     "meanwhile)", getattr(spawner, "_log_name", "?"), self._unreadable)
            self._unreadable = 0
        if body is None:
            return
        await self.send(body)

    def _http(self) -> Any:
        if self._client is None:
            from tornado.httpclient import AsyncHTTPClient

            # an instance of our own (not the hub's shared one), without the defaults the hub
            # may have configured for its internal connections (internal_ssl's CA and client cert)
            self._client = AsyncHTTPClient(force_instance=True, max_clients=self.max_in_flight, defaults={})
        return self._client

    async def send(self, body: dict[str, str]) -> int | None:
        """POST the demand; returns the status (599/None on a connection error). Never raises."""
        from tornado.httpclient import HTTPClientError, HTTPRequest

        key = f"{body['user']}~{body['server']}"
        request = HTTPRequest(
            self.endpoint, method="POST", body=json.dumps(body),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            connect_timeout=self.timeout, request_timeout=self.timeout,
            # a redirect is not hubpilot answering: followed, a 302 became a GET of the page it
            # points to (a sign-in page's 200 counted as delivered) and took the token along
            follow_redirects=False,
        )
        status: int | None = None
        problem = ""
        try:
            response = await self._http().fetch(request, raise_error=False)
            status = response.code
            if 300 <= status < 400:
                problem = (f"{status} redirect to {response.headers.get('Location', '?')} (not followed: give "
                           "hubpilot's own https URL, ending in /api/v1, as the demand url)")
            elif status >= 400 or status == 599:
                problem = f"{status} {(response.body or b'')[:300].decode(errors='replace')}".strip()
                if status == 404:
                    problem += " (the demand url must be hubpilot's API base, ending in /api/v1)"
                if response.error is not None and status == 599:
                    problem = f"{status} {response.error}"
        except HTTPClientError as exc:
            status = exc.code
            problem = str(exc)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        self.sent.append((time.monotonic(), key, status))
        self._report(key, problem)
        return status

    def _report(self, key: str, problem: str) -> None:
        if not problem:
            if self._failures:
                log.info("hubpilot gpu-demand: %s signalled; hubpilot answers again (%d signal(s) "
                         "failed meanwhile)", key, self._failures)
            self._failures = 0
            return
        self._failures += 1
        if self._failures == 1:
            log.warning("hubpilot gpu-demand for %s (POST %s) failed: %s (spawns go on; further failures are "
                        "logged at debug level until a signal gets through)", key, self._shown_endpoint, problem)
        else:
            log.debug("hubpilot gpu-demand for %s (POST %s) failed: %s (%d in a row)", key, self._shown_endpoint,
                      problem, self._failures)


class GpuStartTimeout:
    """The pre-spawn part that gives a GPU spawn ``seconds`` of start timeout (at least), and
    every other spawn of the same spawner its configured timeout back."""

    def __init__(self, seconds: int, *, gpu_profiles: Sequence[str] = (),
                 gpu_resource: str = "nvidia.com/gpu") -> None:
        self.seconds = int(seconds)
        self.gpu_profiles = frozenset(gpu_profiles)
        self.gpu_resource = gpu_resource
        self.resolve_timeout = RESOLVE_TIMEOUT  # the spawn waits on it: see gpu_spawn

    async def __call__(self, spawner: Any) -> None:
        # the spawner object outlives a spawn: remember its configured timeout once
        base = getattr(spawner, "_hubpilot_base_start_timeout", None)
        if base is None:
            base = int(spawner.start_timeout)
            spawner._hubpilot_base_start_timeout = base
        try:
            gpu, _ = await gpu_spawn(spawner, self.gpu_profiles, self.gpu_resource, self.resolve_timeout)
        except Exception as exc:
            # as for a profile_list that does not answer: a longer wait, never a GPU spawn missed
            # (KubeSpawner calls it again in start(), and may then start a GPU server)
            log.warning("hubpilot gpu-start-timeout: cannot tell whether %s is a GPU spawn (%s: %s); taken as "
                        "a GPU spawn (start timeout %s s)", getattr(spawner, "_log_name", "?"),
                        type(exc).__name__, exc, max(base, self.seconds))
            gpu = True
        spawner.start_timeout = max(base, self.seconds) if gpu else base


def _check_profiles(gpu_profiles: Any) -> None:
    """A list of profile names: a bare string would name its letters, and no GPU spawn would be seen."""
    if isinstance(gpu_profiles, (str, bytes)) or not all(isinstance(p, str) for p in gpu_profiles):
        raise ValueError(f"gpu_profiles {gpu_profiles!r} must be a list of profile names (slugs or display "
                         "names), e.g. ['gpu']")


def _check_seconds(seconds: Any) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise ValueError(f"gpu start timeout {seconds!r} must be a whole number of seconds above the GPU node "
                         "boot time, e.g. 1200")


def configure_gpu_start_timeout(c: Any, *, gpu_profiles: Sequence[str] = (), seconds: int = 1200) -> GpuStartTimeout:
    """Give GPU spawns a start timeout of at least ``seconds``: a pre-spawn part sets it on the
    spawner (what JupyterHub waits for), and the GPU profiles' ``kubespawner_override`` get it
    (what KubeSpawner waits for the pod). Without ``gpu_profiles`` every spawn may need a node."""
    _check_profiles(gpu_profiles)
    _check_seconds(seconds)
    part = GpuStartTimeout(seconds, gpu_profiles=gpu_profiles)
    hooks.register_pre_spawn(part, name=START_TIMEOUT_PART_NAME)
    _install_hook(c)
    _raise_start_timeout(c, frozenset(gpu_profiles), int(seconds))
    return part


def _install_hook(c: Any) -> None:
    """Install the composed hook on ``Spawner`` and on every spawner class section that has a
    hook of its own (``c.KubeSpawner.pre_spawn_hook`` would override the one on ``Spawner``),
    keeping each such hook as an essential part, after the access check."""
    sections = ["Spawner", *(k for k in c if k != "Spawner" and k[:1].isupper()
                             and isinstance(c[k], Config) and "pre_spawn_hook" in c[k])]
    for section in sections:
        current = c[section].get("pre_spawn_hook")
        if current is not hooks.pre_spawn_hook:
            if current is not None:
                hooks.register_pre_spawn(current, name=f"configured:{section}", essential=True, configured=True)
            c[section].pre_spawn_hook = hooks.pre_spawn_hook


def configure_scale_demand(
    c: Any,
    *,
    url: str,
    token: str,
    gpu_profiles: Sequence[str] = (),
    gpu_start_timeout: int | None = 1200,
    timeout: float = 5.0,
) -> ScaleDemand:
    """Register the gpu-demand part of the composed pre-spawn hook; raise the GPU profiles'
    start timeout to ``gpu_start_timeout`` seconds (None leaves it)."""
    _check_profiles(gpu_profiles)
    if gpu_start_timeout is not None:
        _check_seconds(gpu_start_timeout)
    part = ScaleDemand(url, token, gpu_profiles=gpu_profiles, timeout=timeout)
    hooks.register_pre_spawn(part, name=PART_NAME)
    _install_hook(c)
    if gpu_start_timeout is not None:
        configure_gpu_start_timeout(c, gpu_profiles=gpu_profiles, seconds=gpu_start_timeout)
    return part


def _raise_start_timeout(c: Any, profiles: frozenset[str], seconds: int, resource: str = "nvidia.com/gpu") -> None:
    profile_list = _profiles(c.KubeSpawner.get("profile_list") if "KubeSpawner" in c else None)
    if profile_list is not None and _raise_gpu_overrides(profile_list, profiles, seconds, resource):
        return
    if profiles:
        # a callable (or later configured) profile_list cannot be edited here: the pre-spawn
        # part alone gives its GPU spawns the timeout; the other servers keep theirs
        return
    # no GPU profile named or found: every server may wait for a GPU node
    for section in ("KubeSpawner", "Spawner"):
        if section in c and "start_timeout" in c[section]:
            c[section].start_timeout = max(int(c[section].start_timeout), seconds)
            return
    c.Spawner.start_timeout = seconds


def _raise(override: dict[str, Any], seconds: int) -> None:
    current = override.get("start_timeout")
    if callable(current):
        # KubeSpawner calls an override value that is callable with the spawner
        def raised(spawner: Any, _current: Any = current) -> Any:
            value = _current(spawner)
            try:
                return max(int(value or 0), seconds)
            except (TypeError, ValueError):  # KubeSpawner judges it, as without hubpilot
                return value

        override["start_timeout"] = raised
        return
    try:
        override["start_timeout"] = max(int(current or 0), seconds)
    except (TypeError, ValueError):
        log.warning("hubpilot: the start_timeout %r of a GPU profile's kubespawner_override is no number of "
                    "seconds; left as it is (KubeSpawner's wait for the pod uses it, not %s s)", current, seconds)


def _raise_gpu_overrides(profile_list: list[Any], profiles: frozenset[str], seconds: int, resource: str) -> bool:
    """Raise the ``start_timeout`` of the overrides a GPU spawn applies (KubeSpawner's own wait
    for the pod); True if the list has GPU profiles or choices. A whole GPU profile gets it in its
    override; for a GPU choice of ``profile_options``, a ``start_timeout`` its profile or the
    choice sets is raised (otherwise the spawner's, which the pre-spawn part sets, applies)."""
    found = False
    for p in profile_list:
        if not isinstance(p, dict):
            continue
        override = p.get("kubespawner_override")
        if (_slug(p) in profiles or str(p.get("display_name", "")) in profiles
                or _asks_for(override, resource)):
            found = True
            if "kubespawner_override" not in p:
                p["kubespawner_override"] = override = {}
            if isinstance(override, dict):
                _raise(override, seconds)
            # else (null: a YAML key left empty): no start_timeout of its own to raise; the
            # pre-spawn part's, on the spawner, is the one KubeSpawner's wait for the pod uses
            continue
        profile_options = p.get("profile_options")
        for option in (profile_options.values() if isinstance(profile_options, dict) else ()):
            if not isinstance(option, dict):
                continue
            choices = option.get("choices") if isinstance(option.get("choices"), dict) else {}
            for choice in [*choices.values(), option.get("unlisted_choice")]:
                choice_override = choice.get("kubespawner_override") if isinstance(choice, dict) else None
                if _asks_for(choice_override, resource):
                    found = True
                    assert isinstance(choice_override, dict)
                    if "start_timeout" in choice_override:
                        _raise(choice_override, seconds)
                    if isinstance(override, dict) and "start_timeout" in override:
                        _raise(override, seconds)
    return found
