"""The web server of ``ahri play`` (:class:`PlayServer`, aiohttp, the ``play`` extra): the page's three files
and one WebSocket per page, each with its own :class:`~ahri_core.play.session.PlaySession`; nothing else
on the machine is served. The messages are those of :mod:`ahri_core.play.protocol`.

Only the person who started it may use it: every request must name the server by one of its own names in its
Host header (a page of another domain that re-resolves to this address names that domain), and the socket
needs the server's random token, which only the URL printed at the start carries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import AhriError, ConfigError
from ..inference.world import WorldModel
from .actions import CONTROL_KEYS
from .protocol import MAX_IN_FLIGHT, frame_message
from .recording import RecordLimits
from .session import EventHandler, PlaySession
from .start import Start

__all__ = [
    "PlayServer",
    "is_local_host",
    "play_threads",
    "require_server_library",
]


STATIC = {  # the only files served: name -> (file in play/static, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/play.js": ("play.js", "text/javascript; charset=utf-8"),
    "/play.css": ("play.css", "text/css; charset=utf-8"),
}
_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def play_threads() -> int:
    """Torch threads for play: one core fewer than :func:`~ahri_core.runtime.default_threads` gives, for
    the server and the page. At batch 1 a second thread barely speeds the model up (the cpu preset: 10.0 vs
    10.6 ms a frame), while it takes the core the server and the browser run on: on 2 idle cores play
    reached 25 frames/s end to end with two threads and 55 with one (docs/benchmarks.md, "Play")."""
    from ..runtime import default_threads

    return max(1, default_threads() - 1)


def is_local_host(host: str) -> bool:
    """Whether ``host`` is a loopback name or address (only this machine can reach it)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_server_library() -> None:
    """The web server library is the ``play`` extra: a clear error when it is not installed."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise ConfigError("ahri play needs its web server: pip install 'ahri[play]' (aiohttp)") from None


def _static_text(name: str) -> bytes:
    from importlib import resources

    return (resources.files("ahri_core.play") / "static" / name).read_bytes()


class PlayServer:
    """The page and one :class:`PlaySession` per connected page, served from a thread of its own.

    ``start()`` listens on ``host:port`` (port 0: any free port) and returns the page's URL with the server's
    token (:attr:`page_url`); requests must name the server by a name of its address or one of
    ``allow_hosts`` (Host header), and every one but the page's files needs the token. ``close()`` ends every
    session (recordings are finished) and stops the server. Sessions share the model; each has its own KV
    cache, worker and noise. ``on_event(kind, data)`` hears "opened"/"closed" ({session}), "recorded" and
    "error" ({session, ...}); it is called from the server's threads and must not block.
    """

    def __init__(
        self,
        world: WorldModel,
        start: Start,
        *,
        steps: int = 4,
        tau_ctx: float = 0.1,
        precision: str = "fp32",
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 7860,
        fps: float | None = None,
        record: bool = False,
        record_dir: str | os.PathLike | None = None,
        max_sessions: int = 4,
        on_event: EventHandler | None = None,
        allow_hosts: Sequence[str] = (),
        record_minutes: float = RecordLimits.minutes,
        record_bytes: int = RecordLimits.bytes,
        record_free_bytes: int = RecordLimits.keep_free,
    ) -> None:
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f"--port {port}: must be in 0..65535 (0: any free port)")
        world.sampler(steps, tau_ctx, precision=precision)  # refuse impossible settings before listening
        self.world, self.start_clip = world, start
        self.options = dict(steps=steps, tau_ctx=tau_ctx, precision=precision, seed=seed, fps=fps,
                            record_dir=record_dir, record_minutes=record_minutes, record_bytes=record_bytes,
                            record_free_bytes=record_free_bytes)
        self.record_at_start = bool(record)
        self.host, self.port = host, int(port)
        self.max_sessions = int(max_sessions)
        self.allow_hosts = [_host_name(h) for h in allow_hosts]
        self.token = secrets.token_urlsafe(32)
        self.on_event = on_event
        self.sessions: dict[int, PlaySession] = {}
        self.recordings: list[Path] = []
        self._count = 0
        # Sessions counted from the moment a socket is accepted, not when its session exists (opening one
        # takes a while on another thread, and sockets that arrive meanwhile must see it).
        self._slots = 0
        self._slots_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._done = threading.Event()  # set when the server's thread has finished
        self._failed: BaseException | None = None
        self._sockets: set[Any] = set()
        # The blocking work the pages ask for (open, record, close a session) runs here; close() waits for it,
        # so no session is still finishing when the process exits.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="ahri-play-task")
        self._assets = {route: (_static_text(name), ctype) for route, (name, ctype) in STATIC.items()}

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the page (an every-address host is reached at loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """The page with the server's token: what ``ahri play`` prints and a browser opens."""
        return f"{self.url}?token={self.token}"

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> str:
        require_server_library()
        self._thread = threading.Thread(target=self._serve, name="ahri-play-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError(f"the play server did not start listening on {self.host}:{self.port} within {timeout:g} s")
        if self._failed is not None:
            self._thread.join()
            raise self._failed
        return self.page_url

    def close(self) -> list[Path]:
        """Stop: every page is disconnected, every session closed; returns all recordings made."""
        # The server's state is an Event, never Thread.is_alive(): on Python 3.11 a join() cut short by Ctrl-C
        # can leave a running thread marked as stopped.
        if self._loop is not None and self._stopping is not None and not self._done.is_set():
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._done.wait(30)
        self._pool.shutdown(wait=True)  # sessions the pages were still opening or closing finish first
        for sid in list(self.sessions):
            self._end(sid)
        return list(self.recordings)

    def wait(self, poll: float = 0.2) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here).

        Sleeps between looks at the flag rather than waiting on the event: a Ctrl-C that lands inside
        ``Event.wait`` can leave the event's internal lock taken by this thread, and ``close`` (which waits on
        the same event) and the server thread (which sets it) would then block on that lock for ever."""
        while self._thread is not None and not self._done.is_set():
            time.sleep(poll)

    def _serve(self) -> None:
        from aiohttp import web

        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self._app(), handle_signals=False, access_log=None, shutdown_timeout=5.0)
        try:
            self._stopping = asyncio.Event()
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            try:
                loop.run_until_complete(site.start())
            except OSError as e:
                why = e.strerror or str(e)
                self._failed = ConfigError(
                    f"cannot listen on {self.host}:{self.port} ({why}); choose another --port or --host"
                )
                return
            addrs = runner.addresses
            if addrs:
                self.port = int(addrs[0][1])
            self._ready.set()
            loop.run_until_complete(self._stopping.wait())
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(runner.cleanup())
            # Pages still connected: cancel their handlers and let each one close its session here, while the
            # loop runs (a handler left pending would run its cleanup later, from the garbage collector).
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._ready.set()
            loop.close()
            self._done.set()

    # ------------------------------------------------------------------ app
    def _app(self):
        from aiohttp import web

        @web.middleware  # sets a mark on the function, which a bound method cannot carry
        async def check(request, handler):
            return await self._check(request, handler)

        app = web.Application(client_max_size=64 * 1024, middlewares=[check])
        for route in STATIC:
            app.router.add_get(route, self._asset, allow_head=False)
        app.router.add_get("/ws", self._socket)
        app.on_shutdown.append(self._disconnect_all)
        return app

    async def _asset(self, request):
        from aiohttp import web

        body, ctype = self._assets[request.path]
        return web.Response(body=body, headers={**_HEADERS, "Content-Type": ctype})

    async def _disconnect_all(self, app) -> None:
        from aiohttp import WSCloseCode

        for ws in list(self._sockets):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopped")

    def _host_allowed(self, host: str | None) -> bool:
        """Whether the Host header names this server: a loopback name or the bound address with its port, or
        a name of ``allow_hosts`` (any port: a proxy in front may listen on another)."""
        if not host:
            return False
        try:
            parts = urlsplit(f"//{host}")
            name, port = (parts.hostname or ""), (parts.port or 80)
        except ValueError:
            return False
        if name in self.allow_hosts:
            return True
        own = {"127.0.0.1", "localhost", "::1"}
        if self.host not in ("", "0.0.0.0", "::"):
            own.add(_host_name(self.host))
        return name in own and port == self.port

    def _token_ok(self, given: str | None) -> bool:
        # compare_digest: the time taken does not tell how much of a guess was right
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def _check(self, request, handler):
        """Every request: the Host header first, then the token (all but the page and its files)."""
        from aiohttp import web

        if not self._host_allowed(request.headers.get("Host")):
            return web.Response(status=403, headers=_HEADERS,
                                text="this server answers only to its own address (ahri play --allow-host NAME)")
        if request.path not in STATIC and not self._token_ok(request.query.get("token")):
            return web.Response(status=403, headers=_HEADERS,
                                text="missing or wrong token: open the URL that ahri play printed")
        return await handler(request)

    def _same_origin(self, request) -> bool:
        """A page of another site may not open the socket (the browser always sends its Origin)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: programs on this machine may connect
        return urlsplit(origin).netloc.lower() == request.host.lower()

    def _open(self, page: EventHandler | None = None) -> tuple[int, PlaySession]:
        """A new session; its events go to ``page`` (the page's socket) and to the server's ``on_event``."""
        self._count += 1
        sid = self._count

        def relay(kind: str, data: dict[str, Any]) -> None:
            if kind == "recorded":
                self.recordings.append(Path(data["path"]))
            if page is not None:
                page(kind, data)
            if self.on_event is not None:
                self.on_event(kind, {"session": sid, **data})

        session = PlaySession(self.world, self.start_clip, on_event=relay, **self.options)
        self.sessions[sid] = session
        if self.record_at_start:
            session.record(True)
        if self.on_event is not None:
            self.on_event("opened", {"session": sid})
        return sid, session

    def _end(self, sid: int) -> None:
        session = self.sessions.get(sid)
        if session is None:
            return
        session.close()
        if self.sessions.pop(sid, None) is not None and self.on_event is not None:
            self.on_event("closed", {"session": sid})

    def hello(self, session: PlaySession) -> dict[str, Any]:
        w = self.world
        start = session.start_clip
        h, wd = start.frames.shape[1:3]
        return {
            "type": "hello", "run": w.name, "fps": session.fps, "model_fps": w.fps, "steps": session.steps,
            "width": int(wd), "height": int(h), "start": start.name, "context": len(start.frames),
            "actions": session.actions.describe(), "controls": {v: k for k, v in CONTROL_KEYS.items()},
        }

    def _reserve(self) -> bool:
        """Take a session's slot (False: all are taken); :meth:`_release` gives it back."""
        with self._slots_lock:
            if self._slots >= self.max_sessions:
                return False
            self._slots += 1
            return True

    def _release(self) -> None:
        with self._slots_lock:
            self._slots -= 1

    async def _socket(self, request):
        from aiohttp import web

        if not self._same_origin(request):
            return web.Response(status=403, text="another site may not open this socket")
        ws = web.WebSocketResponse(compress=False, max_msg_size=16 * 1024)
        await ws.prepare(request)
        if not self._reserve():
            await ws.send_json({"type": "error", "message": f"{self.max_sessions} pages are playing already; close one"})
            await ws.close()
            return ws
        try:
            await self._play(ws)
        finally:  # the session ended, or never started
            self._release()
        return ws

    async def _play(self, ws) -> None:
        """One page's session, from its start to the page's going away."""
        from aiohttp import WSMsgType

        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def to_page(kind: str, data: dict[str, Any]) -> None:
            msg = {"type": kind, **data}
            if kind == "recorded":
                msg["name"] = _shown_path(Path(data["path"]), self.world.run_dir)
            with contextlib.suppress(RuntimeError):  # the server has stopped: nobody to tell
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(_send_json(ws, msg)))

        try:
            sid, session = await loop.run_in_executor(self._pool, self._open, to_page)
        except AhriError as e:
            await ws.send_json({"type": "error", "message": str(e)})
            await ws.close()
            return
        self._sockets.add(ws)
        state = {"in_flight": 0}
        session.notify = lambda: loop.call_soon_threadsafe(changed.set)
        await ws.send_json(self.hello(session))
        session.start()
        sender = asyncio.ensure_future(self._send_frames(ws, session, changed, state))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        continue
                    break
                reply = await self._control(session, msg.data, state, loop)
                changed.set()
                if reply is not None:
                    await ws.send_json(reply)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            self._sockets.discard(ws)
            await loop.run_in_executor(self._pool, self._end, sid)

    async def _control(self, session: PlaySession, text: str, state: dict[str, int], loop) -> dict[str, Any] | None:
        try:
            msg = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested deeper than Python's stack
            return None
        if not isinstance(msg, dict):
            return None
        kind = msg.get("type")
        if kind == "ack":
            state["in_flight"] = max(0, state["in_flight"] - 1)
            return None
        if kind == "keys":
            codes = msg.get("codes")
            if isinstance(codes, list):
                session.set_keys([c for c in codes[:32] if isinstance(c, str) and len(c) <= 32])
            return None
        if kind == "reset":
            session.reset()
        elif kind == "pause":
            on = msg.get("on")
            session.pause(on if isinstance(on, bool) else None)
        elif kind == "record":
            on = msg.get("on")
            await loop.run_in_executor(self._pool, session.record, on if isinstance(on, bool) else None)
        else:
            return None
        return {"type": "state", "paused": session.paused, "recording": session.recording}

    async def _send_frames(self, ws, session: PlaySession, changed: asyncio.Event, state: dict[str, int]) -> None:
        last = 0
        while not ws.closed:
            changed.clear()
            frame = session.latest.get()
            if frame is not None and frame.index != last and state["in_flight"] < MAX_IN_FLIGHT:
                await ws.send_bytes(frame_message(frame, session.stats()))
                last = frame.index
                state["in_flight"] += 1
                continue
            await changed.wait()


async def _send_json(ws, msg: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        if not ws.closed:
            await ws.send_json(msg)


def _shown_path(path: Path, run_dir: Path) -> str:
    """A recording's path as the page shows it: relative to the run's folder's parent when inside it."""
    try:
        return str(path.relative_to(run_dir.parent))
    except ValueError:
        return path.name


def _host_name(host: str) -> str:
    """A host as the Host header's name part compares: lower case, an IPv6 address without brackets, no port."""
    h = host.strip().lower()
    if h.count(":") > 1 and not h.startswith("["):
        return h  # an IPv6 address without brackets
    try:
        return urlsplit(f"//{h}").hostname or h
    except ValueError:
        return h
