"""Who can reach ahri play and what a page cannot make it do: the Host header (DNS rebinding), the
per-server token, the session limit under simultaneous connections, a message nested too deeply to parse,
and the caps on a recording (length, size, free disk)."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time

import pytest
from play_fixtures import CONTEXT, play_world, serving, ws_url

from ahri_core.play.server import PlayServer
from ahri_core.play.session import PlaySession

aiohttp = pytest.importorskip("aiohttp")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return play_world(tmp_path_factory)


async def _status(http, url: str, **kw) -> int:
    async with http.get(url, **kw) as r:
        return r.status


async def _ws_status(http, url: str, **kw) -> int:
    """200 when the socket opens (its first message is read), else the refusal's status."""
    try:
        w = await http.ws_connect(url, **kw)
    except aiohttp.WSServerHandshakeError as e:
        return e.status
    await w.receive(timeout=20)
    await w.close()
    return 200


def test_a_foreign_host_header_is_refused(world):
    """A page of a domain that re-resolves to 127.0.0.1 sends its own name as Host (and as Origin): 403,
    even for the page itself; the names of the bound address and --allow-host ones are served."""
    _, _, _, wm, start = world

    async def go(server, base):
        port = server.port
        async with aiohttp.ClientSession() as http:
            for name in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1.evil.example:{port}",
                         f"localhost:{port + 1}", ""):
                assert await _status(http, base, headers={"Host": name}) == 403, name
                assert await _status(http, base + "play.js", headers={"Host": name}) == 403, name
                origin = {"Origin": f"http://{name}"} if name else {}
                assert await _ws_status(http, ws_url(server), headers={"Host": name, **origin}) == 403, name
            for name in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}",
                         "myhost.example", f"MyHost.example:{port}"):
                assert await _status(http, base, headers={"Host": name}) == 200, name
            name = f"myhost.example:{port}"
            assert await _ws_status(http, ws_url(server),
                                    headers={"Host": name, "Origin": f"http://{name}"}) == 200

    with serving(wm, start, allow_hosts=["myhost.example"]) as (server, base):
        asyncio.run(go(server, base))


def test_the_socket_and_every_other_request_need_the_token(world):
    _, _, _, wm, start = world

    async def go(server, base):
        async with aiohttp.ClientSession() as http:
            assert await _status(http, base) == 200  # the page and its files carry no secret
            assert await _status(http, base + "play.js") == 200
            assert await _ws_status(http, base + "ws") == 403
            assert await _ws_status(http, base + "ws?token=") == 403
            assert await _ws_status(http, base + "ws?token=" + server.token[:-1] + "x") == 403
            assert await _ws_status(http, base + "ws?token=" + server.token + "x") == 403
            assert await _ws_status(http, base + "ws?token=%C3%A9") == 403
            assert await _status(http, base + "other") == 403
            assert await _status(http, base + "other?token=nope") == 403
            assert await _status(http, base + "other?token=" + server.token) == 404
            assert await _ws_status(http, ws_url(server)) == 200

    with serving(wm, start) as (server, base):
        assert len(server.token) >= 32
        page = server.page_url
        assert page == f"{base}?token={server.token}" and page.startswith("http://127.0.0.1:")
        asyncio.run(go(server, base))
    with serving(wm, start) as (other, _):
        assert other.token != server.token  # one per server


class _SlowSession(PlaySession):
    """A session that takes a while to open, as a large model's does: connections keep arriving meanwhile."""

    def __init__(self, *args, **kw):
        time.sleep(0.3)
        super().__init__(*args, **kw)


def test_simultaneous_connections_get_at_most_the_limit_and_leave_no_thread(world, monkeypatch):
    _, _, _, wm, start = world
    monkeypatch.setattr("ahri_core.play.server.PlaySession", _SlowSession)
    before = threading.active_count()
    live, most = [0], [0]
    lock = threading.Lock()

    def on_event(kind, data):
        with lock:
            live[0] += {"opened": 1, "closed": -1}.get(kind, 0)
            most[0] = max(most[0], live[0])

    async def one(http, url):
        w = await http.ws_connect(url)
        first = await w.receive_json(timeout=60)
        return w, first

    async def go(url):
        async with aiohttp.ClientSession() as http:
            got = await asyncio.gather(*(one(http, url) for _ in range(50)))
            kinds = [m["type"] for _, m in got]
            refused = [m["message"] for _, m in got if m["type"] == "error"]
            await asyncio.gather(*(w.close() for w, _ in got))
            return kinds, refused

    server = PlayServer(wm, start, port=0, max_sessions=2, on_event=on_event)
    server.start()
    try:
        kinds, refused = asyncio.run(go(ws_url(server)))
    finally:
        server.close()
    assert 1 <= kinds.count("hello") <= 2 and kinds.count("hello") + len(refused) == 50
    assert all("2 pages are playing already" in m for m in refused)
    assert most[0] <= 2 and live[0] == 0 and server.sessions == {}
    for _ in range(100):  # a thread is listed until its last line has run
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def test_a_message_nested_too_deeply_is_ignored_without_a_traceback(world, caplog, capfd):
    _, _, _, wm, start = world

    async def go(server):
        async with aiohttp.ClientSession() as http:
            w = await http.ws_connect(ws_url(server))
            await w.receive_json()
            await w.send_str("[" * 15000)  # within the size limit: parsed, too deep
            await w.send_str('{"a":' * 3000)
            await w.send_json({"type": "pause"})
            reply = None
            while reply is None:  # the session answers the next message: it survived
                msg = await w.receive(timeout=20)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    reply = msg.json()
                else:
                    assert msg.type == aiohttp.WSMsgType.BINARY, msg
            assert reply["type"] == "state" and reply["paused"]
            assert len(server.sessions) == 1
            await w.send_str("[" * 100000)  # over the size limit: the socket is closed
            while (await w.receive(timeout=20)).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                pass
            v = await http.ws_connect(ws_url(server))  # the server serves on
            assert (await v.receive_json())["type"] == "hello"
            await v.close()

    caplog.set_level(logging.DEBUG)
    with serving(wm, start) as (server, _):
        asyncio.run(go(server))
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------- recording caps


def _record_until_stopped(session: PlaySession, frames: int = 400) -> int:
    """Steps frames until the recording stops (or ``frames`` were made); returns the frames made."""
    for i in range(frames):
        session.step()
        if not session.recording:
            return i + 1
        time.sleep(0.002)  # the recorder writes in its own thread
    return frames


def test_the_caps_stop_a_recording_with_a_message(world, tmp_path):
    _, _, _, wm, start = world
    events = []
    # 3 frames at the run's rate
    s = PlaySession(wm, start, fps=0, record_dir=tmp_path / "a", record_minutes=3 / wm.fps / 60,
                    on_event=lambda k, d: events.append((k, d)))
    s.record(True)
    assert _record_until_stopped(s) == 3
    msgs = [d["message"] for k, d in events if k == "error"]
    assert len(msgs) == 1 and "recording stopped" in msgs[0] and "--record-minutes" in msgs[0]
    recorded = [d for k, d in events if k == "recorded"]
    assert len(recorded) == 1 and recorded[0]["frames"] == 3 and s.stats()["recording"] is False
    s.record(True)  # a new recording may start: the cap is per recording
    assert s.recording
    s.step()
    s.close()
    assert len(s.recordings) == 2

    events.clear()
    s = PlaySession(wm, start, fps=0, record_dir=tmp_path / "b", record_bytes=2000,
                    on_event=lambda k, d: events.append((k, d)))
    s.record(True)
    made = _record_until_stopped(s)
    assert made < 400 and not s.recording
    msgs = [d["message"] for k, d in events if k == "error"]
    assert len(msgs) == 1 and "recording stopped" in msgs[0] and "--record-gb" in msgs[0]
    assert len(s.recordings) == 1 and s.recordings[0].is_file()
    s.close()


def test_too_little_free_disk_refuses_or_stops_a_recording(world, tmp_path, monkeypatch):
    _, _, _, wm, start = world
    events = []
    real = shutil.disk_usage
    free = {"bytes": None}

    def disk_usage(path):
        u = real(path)
        return u if free["bytes"] is None else u._replace(free=free["bytes"])

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    s = PlaySession(wm, start, fps=0, record_dir=tmp_path / "rec", record_free_bytes=10**6,
                    on_event=lambda k, d: events.append((k, d)))
    free["bytes"] = 10**5
    assert s.record(True) is None and not s.recording  # refused before it starts
    msgs = [d["message"] for k, d in events if k == "error"]
    assert len(msgs) == 1 and "free" in msgs[0] and "not recording" in msgs[0]
    free["bytes"] = None
    events.clear()
    s.record(True)
    for _ in range(CONTEXT + 2):
        s.step()
    assert s.recording
    free["bytes"] = 10**5  # the disk fills up meanwhile
    s.step()
    assert not s.recording
    msgs = [d["message"] for k, d in events if k == "error"]
    assert len(msgs) == 1 and "recording stopped" in msgs[0] and "free" in msgs[0]
    assert [d["frames"] for k, d in events if k == "recorded"] == [CONTEXT + 3]
    s.close()


def test_the_page_is_told_when_a_cap_stops_its_recording(world, tmp_path):
    _, _, _, wm, start = world

    async def go(server):
        async with aiohttp.ClientSession() as http:
            w = await http.ws_connect(ws_url(server))
            await w.receive_json()
            texts = []
            while not any(m["type"] == "recorded" for m in texts):
                msg = await w.receive(timeout=20)
                if msg.type == aiohttp.WSMsgType.BINARY:
                    continue
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                texts.append(msg.json())
            await w.close()
            return texts

    with serving(wm, start, record=True, record_dir=tmp_path, record_minutes=2 / wm.fps / 60) as (server, _):
        texts = asyncio.run(go(server))
    errors = [m["message"] for m in texts if m["type"] == "error"]
    assert len(errors) == 1 and "recording stopped" in errors[0]
    assert [m["frames"] for m in texts if m["type"] == "recorded"] == [2]
