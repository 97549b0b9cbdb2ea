"""ahri play without a browser: key -> action mapping, the live sampler, sessions, reset, recording, the
server (its files, its sockets, a client that goes away or never acknowledges) and the command."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from play_fixtures import CONTEXT, play_world, serving, ws_url

from ahri_cli.main import main
from ahri_core.errors import CheckpointError, ConfigError, DataError
from ahri_core.play.actions import ActionSpace, meaning_parts, run_action_meanings
from ahri_core.play.dream import LiveDream
from ahri_core.play.protocol import MAX_IN_FLIGHT, parse_frame_message
from ahri_core.play.server import PlayServer, is_local_host
from ahri_core.play.session import PlaySession
from ahri_core.play.start import start_from_clip, start_from_run
from ahri_core.video import probe, read_frames
from ahri_core.visual import HEADER

aiohttp = pytest.importorskip("aiohttp")

GAME = ["idle", "up", "up_right", "right", "down_right", "down", "down_left", "left", "up_left", "attack"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return play_world(tmp_path_factory)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- actions


def test_keys_choose_the_built_in_games_actions():
    space = ActionSpace(kind="discrete", meanings=tuple(GAME), idle=0)
    choose = space.choose
    assert choose([]) == 0 and space.label(choose([])) == "idle"
    assert GAME[choose(["ArrowRight"])] == "right" and GAME[choose(["KeyD"])] == "right"
    assert GAME[choose(["ArrowUp", "KeyD"])] == "up_right"
    assert GAME[choose(["ArrowDown", "ArrowLeft"])] == "down_left"
    assert GAME[choose(["ArrowRight", "ArrowLeft"])] == "left"  # both of a pair: the later one
    assert GAME[choose(["Space"])] == "attack"
    # no "up_right_attack": the largest part of the held keys, the most recent key first
    assert GAME[choose(["ArrowUp", "ArrowRight", "Space"])] == "up_right"
    assert GAME[choose(["ArrowUp", "Space"])] == "attack" and GAME[choose(["Space", "ArrowUp"])] == "up"
    assert choose(["Digit7"]) == 7 and choose(["ArrowUp", "Numpad9"]) == 9
    assert choose(["KeyQ"]) == 0  # a key that means nothing here
    rows = {r["meaning"]: r["keys"] for r in space.key_help()}
    assert rows["idle"] == ["no key", "0"] and rows["up_right"] == ["↑/W+→/D", "2"] and rows["attack"] == ["space", "9"]


def test_atari_meanings_and_a_run_without_a_noop():
    ale = ["NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT", "UPFIRE",
           "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE"]
    space = ActionSpace(kind="discrete", meanings=tuple(ale), idle=0)
    assert ale[space.choose(["ArrowRight", "Space"])] == "RIGHTFIRE"
    assert ale[space.choose(["KeyW", "KeyA", "Space"])] == "UPLEFTFIRE"
    assert space.choose([]) == 0
    assert meaning_parts("RESET") is None and meaning_parts("NOOP") == frozenset()
    pong = ActionSpace(kind="discrete", meanings=("FIRE", "RIGHT", "LEFT"), idle=-1)
    assert pong.choose([]) == -1 and pong.label(-1) == "no action"
    assert pong.tensor(-1).tolist() == [[-1]]
    assert ActionSpace().tensor(0) is None  # a model without actions gets none
    cont = ActionSpace(kind="continuous", dim=3)
    assert torch.isnan(cont.tensor(cont.choose(["ArrowUp"]))).all()


def test_a_run_reads_its_action_meanings_from_its_latent_set(world):
    wm = world[3]
    assert run_action_meanings(wm) == GAME
    space = ActionSpace.of(wm)
    assert space.kind == "discrete" and space.meanings == tuple(GAME) and space.idle == 0


class _CodeBook(torch.nn.Module):
    """A stand-in latent-action encoder: 4 codes on a 2 x 2 grid; infers "code 0" for every frame but the first."""

    def vectors(self, codes):
        grid = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
        out = grid[codes.clamp(min=0)]
        out[codes < 0] = float("nan")
        return out

    def forward(self, latents):
        b, t = latents.shape[:2]
        out = torch.full((b, t, 2), -1.0)
        out[:, 0] = float("nan")
        return out


def test_a_latent_action_run_is_steered_through_its_code_book(world):
    """The hook for runs trained with latent actions: codes named in the run get their keys, every code
    its number key, and the model is given the code's vector."""
    from dataclasses import fields

    from ahri_core.inference.sampler import ModelTraits
    from ahri_core.inference.world import WorldModel
    from ahri_core.models.dynamics import build_dynamics

    ws, _, _, wm, start = world
    book = _CodeBook()

    class LatentWorld(WorldModel):
        latent_actions = property(lambda self: book)
        code_count = property(lambda self: 4)

        def action_names(self):
            return {"left": 1, "right": 2}

    torch.manual_seed(0)
    dyn = build_dynamics("tiny", tokens=4, channels=16, k_max=8, max_frames=8, action_kind="continuous",
                         action_dim=2).eval()
    kw = {f.name: getattr(wm, f.name) for f in fields(WorldModel)}
    lw = LatentWorld(**{**kw, "dynamics": dyn, "traits": ModelTraits(k_max=8, shortcut=True, max_frames=8)})
    space = ActionSpace.of(lw)
    assert space.kind == "latent" and space.meanings == ("code 0", "left", "right", "code 3") and space.idle == -1
    assert space.choose(["ArrowLeft"]) == 1 and space.choose(["KeyD"]) == 2 and space.choose(["Digit3"]) == 3
    assert space.choose([]) == -1 and torch.isnan(space.tensor(-1)).all()
    assert space.tensor(2).tolist() == [[[-1.0, 1.0]]]
    lstart = start_from_clip(lw, ws.videos / "game" / start.name, CONTEXT)
    assert lstart.actions.shape == (CONTEXT, 2) and torch.isnan(lstart.actions[0]).all()
    frames = {}
    for key in ("ArrowLeft", "ArrowRight"):
        s = PlaySession(lw, lstart, fps=0)
        s.set_keys([key])
        frames[key] = _run(s, CONTEXT + 3)[CONTEXT:]
    assert [f.action for f in frames["ArrowLeft"]] == ["left"] * 3
    assert not np.array_equal(frames["ArrowLeft"][-1].image, frames["ArrowRight"][-1].image)


# ---------------------------------------------------------------------------------------------- live sampler


def test_live_dream_makes_the_frames_of_the_sampler(world):
    """Frame by frame with the action of each frame given when it is made = one rollout with all actions."""
    _, _, _, wm, start = world
    acts = torch.tensor([3, 3, 7, 9, 0, 3, 5, 5])
    live = LiveDream(wm, steps=2, tau_ctx=0.1, seed=5)
    live.start(start.latents, start.actions)
    got = torch.stack([live.next(torch.tensor([[int(a)]])) for a in acts])
    all_actions = torch.cat([start.actions, acts])[None]
    ref = wm.sampler(2, 0.1).rollout(start.latents[None], len(acts), actions=all_actions, generator=5)
    torch.testing.assert_close(got, ref.latents[0], rtol=1e-5, atol=1e-5)
    assert live.frames == CONTEXT + len(acts) - 1  # the last frame is committed at the next call
    live.settle()
    assert live.frames == CONTEXT + len(acts)


def test_a_start_from_the_run_is_a_held_out_video_and_a_clip_must_be_long_enough(world, tmp_path):
    ws, lat, _, wm, start = world
    from sampling_fakes import held_out

    assert start.name == f"{held_out(lat)[0]}.mp4"
    assert start.frames.shape == (CONTEXT, 32, 32, 3) and start.latents.shape == (CONTEXT, 4, 16)
    assert start.actions is not None and start.actions.dtype == torch.long
    with pytest.raises(DataError, match="fewer than --context 400"):
        start_from_clip(wm, ws.videos / "game" / start.name, 400)
    with pytest.raises(DataError, match="no held-out video of at least 400 frames"):
        start_from_run(wm, 400)


# ---------------------------------------------------------------------------------------------- sessions


def _run(session: PlaySession, n: int) -> list:
    return [session.step() for _ in range(n)]


def test_a_session_shows_the_real_start_then_dreams_and_reset_repeats_it(world):
    _, _, _, wm, start = world
    s = PlaySession(wm, start, steps=4, fps=0)
    s.set_keys(["ArrowRight"])
    first = _run(s, CONTEXT + 5)
    assert [f.real for f in first] == [True] * CONTEXT + [False] * 5
    assert [f.step for f in first] == [1, 2, 3, 4, 1, 2, 3, 4, 5]
    assert np.array_equal(first[0].image, start.frames[0])
    assert {f.action for f in first[CONTEXT:]} == {"right"} and all(f.start == 1 for f in first)
    assert [f.index for f in first] == list(range(1, CONTEXT + 6))
    s.set_keys([])
    assert s.step().action == "idle"
    s.reset()
    s.set_keys(["ArrowRight"])
    again = _run(s, CONTEXT + 5)
    assert again[0].real and again[0].step == 1 and all(f.start == 2 for f in again)
    for a, b in zip(first, again):  # the same start, keys and noise: the same frames
        assert np.array_equal(a.image, b.image)
    s.reset()
    s.set_keys(["ArrowLeft"])
    left = _run(s, CONTEXT + 5)
    assert {f.action for f in left[CONTEXT:]} == {"left"}
    assert all(not np.array_equal(a.image, b.image) for a, b in zip(first[CONTEXT:], left[CONTEXT:]))


def test_recording_marks_real_and_dreamed_frames(world, tmp_path):
    _, _, _, wm, start = world
    events = []
    s = PlaySession(wm, start, fps=0, record_dir=tmp_path / "rec", on_event=lambda k, d: events.append((k, d)))
    assert s.record() is None and s.recording  # toggled on
    _run(s, CONTEXT + 6)
    path = s.record()  # toggled off: the file is written
    assert path is not None and path.parent == tmp_path / "rec" and path.suffix == ".mp4"
    assert events == [("recorded", {"path": str(path), "frames": CONTEXT + 6})]
    info = probe(path)
    assert info.frames == CONTEXT + 6 and (info.height, info.width) == (HEADER + 4 * 32, 4 * 32)
    out = read_frames(path)
    edge = out[:, HEADER + 10 : HEADER + 50, 0].astype(int)
    red = (edge[..., 0] > 180) & (edge[..., 1] < 100)
    green = (edge[..., 1] > 150) & (edge[..., 0] < 120)
    assert red[CONTEXT:].mean() > 0.9 and green[:CONTEXT].mean() > 0.9
    # nothing recorded, no file; a second recording gets its own name
    s.record(True)
    assert s.record(False) is None
    s.record(True)
    _run(s, 2)
    second = s.close()  # closing finishes a recording in progress
    assert len(second) == 2 and second[0] == path and second[1] != path and probe(second[1]).frames == 2
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == sorted(p.name for p in second)  # no temp files


def test_the_worker_paces_frames_pauses_and_stops(world):
    _, _, _, wm, start = world
    s = PlaySession(wm, start, fps=40)
    s.start()
    try:
        f = s.latest.wait_newer(CONTEXT + 3, timeout=10)
        assert f is not None and not f.real
        t0, i0 = time.perf_counter(), f.index
        f = s.latest.wait_newer(i0 + 8, timeout=10)
        rate = (f.index - i0) / (time.perf_counter() - t0)
        assert rate < 60  # paced near 40 fps, not as fast as the tiny model can go
        assert s.pause() is True
        time.sleep(0.15)
        held = s.latest.get().index
        time.sleep(0.3)
        assert s.latest.get().index == held and s.stats()["paused"]
        s.pause(False)
        assert s.latest.wait_newer(held, timeout=10) is not None
    finally:
        s.close()
    assert not s.alive and s.error is None


def test_a_failing_model_stops_the_worker_and_says_why(world, monkeypatch):
    _, _, _, wm, start = world
    events = []

    def broken(self, action):
        raise CheckpointError("dynamics model m.safetensors produced non-finite latents")

    monkeypatch.setattr(LiveDream, "next", broken)
    s = PlaySession(wm, start, fps=0, on_event=lambda k, d: events.append((k, d)))
    s.start()
    for _ in range(400):
        if not s.alive:
            break
        time.sleep(0.02)
    assert not s.alive and "non-finite" in s.error
    assert events == [("error", {"message": "dynamics model m.safetensors produced non-finite latents"})]
    assert s.latest.get().real  # the real frames were shown before the model failed
    s.close()


def test_a_model_slower_than_the_target_is_reported_and_frames_are_not_queued(world):
    _, _, _, wm, start = world
    s = PlaySession(wm, start, fps=10_000)  # no model makes 10,000 frames/s: it runs flat out
    s.start()
    try:
        assert s.latest.wait_newer(CONTEXT + 10, timeout=20) is not None
        st = s.stats()
        assert st["behind"] and 0 < st["model_fps"] < 10_000
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------- server


async def _frames(w, n: int, ack: bool = True, timeout: float = 20.0) -> tuple[list, list]:
    """``n`` frames (acknowledged or not) and the JSON messages seen meanwhile."""
    got, texts = [], []
    while len(got) < n:
        msg = await w.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            head, img = parse_frame_message(msg.data)
            got.append((head, img))
            if ack:
                await w.send_json({"type": "ack", "frame": head["frame"]})
        elif msg.type == aiohttp.WSMsgType.TEXT:
            texts.append(msg.json())
        else:
            raise AssertionError(f"socket ended: {msg.type}")
    return got, texts


def test_the_server_serves_the_page_and_nothing_else(world):
    _, _, _, wm, start = world

    async def go(url):
        async with aiohttp.ClientSession() as http:
            r = await http.get(url)
            page = await r.text()
            assert r.status == 200 and "<canvas" in page and r.headers["Content-Security-Policy"]
            assert (await http.get(url + "play.js")).status == 200
            assert (await http.get(url + "play.css")).headers["Content-Type"].startswith("text/css")
            for bad in ("pyproject.toml", "play_static/index.html", "../../etc/passwd", "%2e%2e/play.py",
                        "ahri_core/play.py", "index.html"):
                assert (await http.get(url + bad, params={"token": server.token})).status == 404, bad
            r = await http.get(ws_url(server), headers={"Origin": "http://evil.example"})
            assert r.status == 403

    with serving(wm, start) as (server, url):
        assert url.startswith("http://127.0.0.1:") and server.port != 0
        asyncio.run(go(url))


def test_sessions_keys_reset_and_a_client_that_disconnects(world):
    ws, _, run, wm, start = world
    events = []

    async def go(url):
        async with aiohttp.ClientSession() as http:
            a = await http.ws_connect(ws_url(server))
            hello = await a.receive_json()
            assert hello["type"] == "hello" and hello["actions"]["meanings"] == GAME and hello["context"] == CONTEXT
            assert hello["controls"] == {"reset": "KeyR", "pause": "KeyP", "record": "KeyV"}
            await a.send_json({"type": "keys", "codes": ["ArrowLeft"]})
            await a.send_json({"type": "record"})
            got, texts = await _frames(a, CONTEXT + 4)
            assert {"type": "state", "paused": False, "recording": True} in texts
            assert [h["real"] for h, _ in got[:CONTEXT]] == [True] * CONTEXT
            assert got[-1][0]["action"] == "left" and got[-1][0]["width"] == 32
            b = await http.ws_connect(ws_url(server))  # a second page: its own session
            await b.receive_json()
            assert len(server.sessions) == 2
            await _frames(b, 2)
            await a.send_json({"type": "reset"})
            got, _ = await _frames(a, 20)
            assert any(h["start"] == 2 and h["real"] for h, _ in got)
            await a.close()  # the first page goes away while recording
            for _ in range(100):
                if len(server.sessions) == 1:
                    break
                await asyncio.sleep(0.05)
            assert len(server.sessions) == 1
            got, _ = await _frames(b, 3)  # the other page plays on
            await b.close()

    with serving(wm, start, on_event=lambda k, d: events.append((k, d))) as (server, url):
        asyncio.run(go(url))
        recorded = [d for k, d in events if k == "recorded"]
        assert len(recorded) == 1 and recorded[0]["session"] == 1
        path = Path(recorded[0]["path"])
        assert path.parent == run / "play" and probe(path).frames == recorded[0]["frames"] > CONTEXT
        assert ("closed", {"session": 1}) in events
    assert server.sessions == {} and server.recordings == [path]
    assert ("closed", {"session": 2}) in events


def test_closing_the_server_finishes_every_session_before_it_returns(world, monkeypatch):
    """Ctrl-C with one page still playing and another just gone: close() ends both sessions and their
    recordings before it returns, and leaves no thread of the server running (the process can exit)."""
    _, _, _, wm, start = world
    events = []
    server = PlayServer(wm, start, port=0, record=True, on_event=lambda k, d: events.append((k, d)))
    server.start()
    # On Python 3.11 a join() cut short by Ctrl-C can mark the running thread as stopped: close() must not care.
    monkeypatch.setattr(server._thread, "is_alive", lambda: False)

    async def go():
        async with aiohttp.ClientSession() as http:
            a = await http.ws_connect(ws_url(server))
            b = await http.ws_connect(ws_url(server))
            await a.receive_json()
            await b.receive_json()
            await _frames(a, 2)
            await _frames(b, 2)
            await a.close()  # gone just before the stop: the server may not have heard yet
            return await asyncio.to_thread(server.close)

    recordings = asyncio.run(go())
    assert server.sessions == {} and len(recordings) == 2 and all(p.is_file() for p in recordings)
    assert sorted(d["session"] for k, d in events if k == "closed") == [1, 2]
    time.sleep(0.2)  # a thread is listed until its last line has run
    assert not [t.name for t in threading.enumerate() if t.name.startswith("ahri-play")]


def test_ctrl_c_in_wait_leaves_close_working(world, monkeypatch):
    """Ctrl-C lands while the main thread waits for the server; close() still stops it at once. wait() holds no
    lock while it sleeps (a Ctrl-C inside Event.wait can leave the event's lock taken, and close() then hung)."""
    import signal

    _, _, _, wm, start = world
    server = PlayServer(wm, start, port=0)
    server.start()
    waits: list[float | None] = []
    real_wait = type(server._done).wait
    monkeypatch.setattr(server._done, "wait", lambda timeout=None: waits.append(timeout) or real_wait(server._done, timeout))

    def ctrl_c(signum, frame):  # noqa: ANN001
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, ctrl_c)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            server.wait()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert waits == []  # wait() never blocked on the event itself
    t = time.perf_counter()
    server.close()
    assert server._done.is_set() and time.perf_counter() - t < 10


def test_a_page_that_never_acknowledges_gets_only_the_newest_frames(world):
    _, _, _, wm, start = world

    async def go(url):
        async with aiohttp.ClientSession() as http:
            w = await http.ws_connect(ws_url(server))
            await w.receive_json()
            first, _ = await _frames(w, MAX_IN_FLIGHT, ack=False)
            with pytest.raises(asyncio.TimeoutError):
                await w.receive(timeout=0.5)  # nothing more until a frame is drawn
            session = next(iter(server.sessions.values()))
            made = session.latest.get().index
            assert made > first[-1][0]["frame"] + 3  # the model went on meanwhile
            await w.send_json({"type": "ack", "frame": first[0][0]["frame"]})
            (head, _), = (await _frames(w, 1))[0]
            assert head["frame"] >= made  # the newest frame, not the next in line
            await w.send_json({"type": "pause"})
            await w.close()

    with serving(wm, start, fps=50) as (server, url):
        asyncio.run(go(url))


def test_too_many_pages_and_a_port_in_use(world):
    _, _, _, wm, start = world

    async def go(url):
        async with aiohttp.ClientSession() as http:
            a = await http.ws_connect(ws_url(server))
            await a.receive_json()
            b = await http.ws_connect(ws_url(server))
            msg = await b.receive_json()
            assert msg["type"] == "error" and "1 pages are playing already" in msg["message"]
            await a.close()

    with serving(wm, start, max_sessions=1) as (server, url):
        asyncio.run(go(url))
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{server.port} .*--port"):
            PlayServer(wm, start, port=server.port).start()
    with pytest.raises(ConfigError, match="power of two"):
        PlayServer(wm, start, steps=3)
    assert is_local_host("127.0.0.1") and is_local_host("::1") and is_local_host("localhost")
    assert not is_local_host("0.0.0.0") and not is_local_host("192.168.1.4")


# ---------------------------------------------------------------------------------------------- command


def test_play_command_errors(world, tmp_path, capsys):
    ws = world[0]
    assert main(["-w", str(ws.root), "play", "no-such-run"]) == 2
    assert "run 'no-such-run' not found" in capsys.readouterr().err
    assert main(["-w", str(ws.root), "play", "dyn-test", "--port", "70000"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--port" in err and "65535" in err
    assert main(["-w", str(ws.root), "play", "dyn-test", "--clip", str(tmp_path / "none.mp4")]) == 2
    assert "no such video file" in capsys.readouterr().err
    assert main(["-w", str(ws.root), "play", "dyn-test", "--steps", "16"]) == 2
    assert "k_max=8" in capsys.readouterr().err.replace("\n", " ")
    assert main(["-w", str(tmp_path / "empty"), "play"]) == 2
    assert "no finished dynamics run" in capsys.readouterr().err.replace("\n", " ")
    assert main(["-w", str(ws.root), "play", "dyn-test", "--record-minutes", "0"]) == 2
    assert "play.record_minutes=0" in capsys.readouterr().err.replace("\n", " ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_play_command_serves_until_interrupted(world, tmp_path):
    """The installed command as a user runs it: prints the URL, serves a page, records, stops on Ctrl-C."""
    ws = world[0]
    exe = Path(sys.executable).parent / "ahri"
    env = {**os.environ, "COLUMNS": "80", "AHRI_HOME": str(tmp_path / "home")}
    port = _free_port()
    proc = subprocess.Popen(
        [str(exe), "-w", str(ws.root), "play", "dyn-test", "--port", str(port), "--context", "3", "--record",
         "--precision", "fp32", "--host", "localhost"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # Ctrl-C as in a terminal: a suite started in the background (`cmd &`) passes SIGINT on ignored, and a
        # Python started with SIGINT ignored keeps ignoring it, so the command would never see the signal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"open http://localhost:{port}/"), (line, proc.stderr.read() if proc.poll() else "")
        token = re.fullmatch(rf"open http://localhost:{port}/\?token=([\w-]{{43}}) in a browser \(Ctrl-C stops\)\n", line)
        assert token, line

        async def go():
            async with aiohttp.ClientSession() as http:
                w = await http.ws_connect(f"http://127.0.0.1:{port}/ws?token={token[1]}")
                assert (await w.receive_json())["context"] == 3
                await _frames(w, 6)
                await w.close()

        asyncio.run(go())
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "warning" not in err  # localhost: no warning
    assert "page 1 opened" in err and "precision fp32" in err
    rec = [x for x in rest.splitlines() if x.startswith("recorded ")]
    assert len(rec) == 1 and "dyn-test/play/" in rec[0] and rec[0].endswith("frames)")


def test_play_help_at_80_columns(tmp_path):
    exe = Path(sys.executable).parent / "ahri"
    r = subprocess.run([str(exe), "play", "--help"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COLUMNS": "80", "AHRI_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert all(len(x) <= 80 for x in r.stdout.splitlines())
    text = " ".join(r.stdout.split())
    for flag in ("--clip", "--port", "--steps", "--host", "--record", "--context", "--allow-host", "--record-minutes",
                 "--record-gb"):
        assert flag in text
    assert "Example: ahri play RUN" in text
