"""Frames per second of ``ahri play`` at 4 steps, end to end: model, decode, encode and send.

A ``cpu``-preset dynamics model (16 model tokens: the cpu tokenizer's 64 x 12 latents packed by 4, window of
32 frames, discrete actions) and a ``cpu`` tokenizer, both with random weights (speed does not depend on the
weights), played through the real server: a WebSocket client on this machine receives every frame the
server sends, acknowledges it as the page does, and counts dreamed frames per second.

1. End to end, the worker unpaced (``fps=0``: as fast as it can): the figure the 15 frames/s goal is about;
   and paced at the run's 20 fps: what a page gets.
2. Where a frame's time goes, from the session's own timers and separate timings: the 4 denoising calls,
   the commit of the frame to the KV cache, decoding, building the message (header + raw RGB bytes) and a
   PNG or JPEG of the same frame for comparison (not used: raw bytes are sent).
3. Per-frame model cost at window 8, 16 and 32 frames (the KV cache makes it flat) and without the cache.

Each figure is the best of ``--repeat`` runs (shared machines; the best is the least disturbed).

    python benchmarks/bench_play.py
    python benchmarks/bench_play.py --seconds 3 --out benchmarks/results/play_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ahri_core.inference.sampler import ModelTraits, Sampler
from ahri_core.inference.world import WorldModel
from ahri_core.models.dynamics import build_dynamics
from ahri_core.models.tokenizer import build_tokenizer
from ahri_core.play.frames import Frame
from ahri_core.play.protocol import frame_message, parse_frame_message
from ahri_core.play.server import PlayServer, play_threads
from ahri_core.play.session import PlaySession
from ahri_core.play.start import Start
from ahri_core.runtime import apply_threads, cpu_name
from ahri_core.sources.game import ACTION_MEANINGS
from ahri_core.visual import to_uint8


def make_world(run_dir: Path, max_frames: int = 32) -> WorldModel:
    torch.manual_seed(0)
    tok = build_tokenizer("cpu").eval()
    cfg = tok.cfg
    dyn = build_dynamics("cpu", tokens=cfg.tokens, channels=cfg.channels, k_max=64, max_frames=max_frames,
                         action_kind="discrete", action_count=10).eval()
    traits = ModelTraits(k_max=64, shortcut=True, max_frames=max_frames)
    return WorldModel(dynamics=dyn, traits=traits, tokenizer=tok, fps=20.0, size=(int(cfg.height), int(cfg.width)),
                      run_dir=run_dir, info={"latents": {"action_meanings": list(ACTION_MEANINGS)}}, fit=str(cfg.fit))


def make_start(world: WorldModel, context: int = 16) -> Start:
    h, w = world.size
    frames = np.random.default_rng(0).integers(0, 256, (context, h, w, 3), dtype=np.uint8)
    return Start(frames, world.encode(frames), torch.zeros(context, dtype=torch.long), "random", (0, 0, h, w))


async def _client(url: str, seconds: float, keys: list[str]) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url + "ws")
        await ws.receive_json()
        await ws.send_json({"type": "keys", "codes": keys})
        t0, n, dreamed, last = None, 0, 0, None
        while True:
            msg = await ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            head, _ = parse_frame_message(msg.data)
            await ws.send_json({"type": "ack", "frame": head["frame"]})
            if head["real"]:
                continue
            now = time.perf_counter()
            if t0 is None:  # the clock starts at the first dreamed frame (after the context)
                t0, first = now, head["frame"]
                continue
            dreamed += 1
            n = head["frame"] - first
            last = head
            if now - t0 >= seconds:
                break
        await ws.close()
        return {"frames_per_s": dreamed / (now - t0), "made_per_s": n / (now - t0), "last": last}


def end_to_end(world: WorldModel, start: Start, precision: str, fps: float, seconds: float) -> dict:
    server = PlayServer(world, start, steps=4, precision=precision, port=0, fps=fps)
    url = server.start()
    try:
        return asyncio.run(_client(url, seconds, ["ArrowRight"]))
    finally:
        server.close()


def breakdown(world: WorldModel, start: Start, precision: str, frames: int) -> dict:
    """ms per frame of each part, measured on the caller's thread."""
    s = PlaySession(world, start, steps=4, precision=precision, fps=0)
    s.set_keys(["ArrowRight"])
    for _ in range(len(start.frames) + 5):  # context and warm-up
        s.step()
        s.settle()
    denoise, commit, decode, message, png, jpeg = [], [], [], [], [], []
    for _ in range(frames):
        t = time.perf_counter()
        latent = s.live.next(s.actions.tensor(3))
        t1 = time.perf_counter()
        s.live.settle()
        t2 = time.perf_counter()
        img = to_uint8(world.decode(latent[None]))[0]
        t3 = time.perf_counter()
        frame_message(Frame(1, img, False, 1, "right"), s.stats())
        t4 = time.perf_counter()
        Image.fromarray(img).save(io.BytesIO(), format="PNG")
        t5 = time.perf_counter()
        Image.fromarray(img).save(io.BytesIO(), format="JPEG", quality=85)
        t6 = time.perf_counter()
        for lst, v in ((denoise, t1 - t), (commit, t2 - t1), (decode, t3 - t2), (message, t4 - t3), (png, t5 - t4),
                       (jpeg, t6 - t5)):
            lst.append(v)
    med = lambda xs: 1e3 * float(np.median(xs))  # noqa: E731
    return {"denoise_4_calls_ms": med(denoise), "commit_ms": med(commit), "decode_ms": med(decode),
            "message_raw_ms": med(message), "png_ms": med(png), "jpeg_ms": med(jpeg),
            "raw_bytes": int(img.nbytes)}


def model_cost(max_frames: int, precision: str, cache: bool, frames: int = 24) -> float:
    """ms of one new frame (4 steps + its commit) after the window is full."""
    w = make_world(Path(tempfile.gettempdir()), max_frames=max_frames)
    ctx = torch.randn(1, max_frames, w.dynamics.config.tokens, w.dynamics.config.channels)
    s = Sampler(w.dynamics, w.traits, steps=4, tau_ctx=0.1, cache=cache, precision=precision)
    res = s.rollout(ctx, frames, generator=0)
    return 1e3 * float(np.median(res.frame_seconds[4:]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each end-to-end measurement")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as ahri play, play_threads())")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here as well as printing it")
    args = ap.parse_args(argv)
    apply_threads(args.threads if args.threads is not None else play_threads())
    tmp = Path(tempfile.mkdtemp(prefix="bench-play-"))
    world = make_world(tmp / "run")
    start = make_start(world)
    results: dict = {
        "benchmark": "play",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_name(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "settings": {"dynamics": "cpu", "tokenizer": "cpu", "steps": 4, "frame": list(world.size),
                     "latents": [world.dynamics.config.tokens, world.dynamics.config.channels],
                     "pack": world.dynamics.config.pack, "window": 32, "repeat": args.repeat},
    }
    rows: list[tuple[str, str]] = []
    for p in args.precision:
        flat = max((end_to_end(world, start, p, 0, args.seconds) for _ in range(args.repeat)),
                   key=lambda r: r["frames_per_s"])
        paced = end_to_end(world, start, p, 20.0, args.seconds)
        parts = breakdown(world, start, p, 30)
        per = {str(m): model_cost(m, p, True) for m in (8, 16, 32)}
        per["32_uncached"] = model_cost(32, p, False)
        results[p] = {"end_to_end_unpaced": flat, "end_to_end_paced_20": paced, "breakdown": parts,
                      "model_ms_by_window": per}
        rows += [
            (f"{p}: end to end, unpaced (model, decode, encode, send)", f"{flat['frames_per_s']:.1f} frames/s"),
            (f"{p}: end to end, paced at the run's 20 fps", f"{paced['frames_per_s']:.1f} frames/s"),
            (f"{p}: 4 denoising calls / commit / decode", f"{parts['denoise_4_calls_ms']:.1f} / {parts['commit_ms']:.1f} / "
                                                         f"{parts['decode_ms']:.1f} ms"),
            (f"{p}: message (raw RGB, {parts['raw_bytes']} bytes) / PNG / JPEG",
             f"{parts['message_raw_ms']:.3f} / {parts['png_ms']:.2f} / {parts['jpeg_ms']:.2f} ms"),
            (f"{p}: model per frame, window 8 / 16 / 32 (KV cache)", f"{per['8']:.1f} / {per['16']:.1f} / {per['32']:.1f} ms"),
            (f"{p}: model per frame, window 32 without the cache", f"{per['32_uncached']:.1f} ms"),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"play benchmark: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    text = json.dumps(results, indent=2, default=str)
    if args.out is not None:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
