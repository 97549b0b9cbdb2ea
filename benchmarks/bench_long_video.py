"""Speed and peak memory of decoding and tokenizing one long 1280x720 30 fps video, against its length.

A long recording (an hour of gameplay) must stream through ``ahri tokenize``: frames are decoded, resampled
and resized one by one and encoded in batches, so the peak resident set should stay well under 1.5 GB
and must not grow with the video's length. For each length a synthetic h264 video is generated once (a scrolling gradient and a moving
rectangle, x264 ultrafast, crf 28; kept under ``--work`` for reruns), then two fresh subprocesses measure:
- decode: iterate ``ahri_core.video.iter_frames`` at 20 fps, letterboxed to ``--decode-size``;
- tokenize: ``ahri_core.data.tokenize.tokenize_videos`` (what ``ahri tokenize`` runs: latents are written to
  their file as they are made) with a freshly built (untrained: the speed and memory do not depend on the
  weights) tokenizer of ``--preset`` at the shape the preset gives a 16:9 source (48x80 for ``cpu``).
Each records frames per second (frames produced at 20 fps, and source frames at 30 fps) and the peak
resident set (``VmHWM`` of /proc/self/status).

Example:
    python benchmarks/bench_long_video.py                        # 1 and 2 minutes: a quick check, ~2 minutes
    python benchmarks/bench_long_video.py --minutes 10 30 60     # generating the hour takes a while (once)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ahri_core.runtime import cpu_name
from ahri_core.runtime import process_memory as proc_status

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "long_video.json"
WIDTH, HEIGHT, SOURCE_FPS = 1280, 720, 30
TARGET_PEAK = 1.5 * 1024**3
MIB = 1024 * 1024






# ---------------------------------------------------------------------------------------------- the video
def synthetic_frames(count: int) -> Iterator[np.ndarray]:
    """``count`` yuv420p frames ((720 * 3 / 2, 1280) uint8: the Y plane, then U and V): a gradient scrolling
    left and a rectangle bouncing around. Made in YUV directly: converting RGB would cost more than x264."""
    h, w = HEIGHT, WIDTH
    x = np.arange(2 * w)[None, :]
    y = np.arange(h)[:, None]
    wide_y = ((x * 200 // w + y * 55 // h) % 256).astype(np.uint8)
    wide_u = ((x[:, ::2] // 32 + y[::2] // 32) % 2 * 96 + 80).astype(np.uint8)
    wide_v = ((x[:, ::2] * 255 // w) % 256).astype(np.uint8)
    buf = np.empty((h * 3 // 2, w), np.uint8)
    ys, us, vs = buf[:h], buf[h : h + h // 4].reshape(h // 2, w // 2), buf[h + h // 4 :].reshape(h // 2, w // 2)
    for i in range(count):
        off = (8 * i) % w  # even: the chroma planes move by whole samples
        ys[:] = wide_y[:, off : off + w]
        us[:] = wide_u[:, off // 2 : off // 2 + w // 2]
        vs[:] = wide_v[:, off // 2 : off // 2 + w // 2]
        rx = abs((12 * i) % (2 * (w - 160)) - (w - 160)) // 2 * 2
        ry = abs((6 * i) % (2 * (h - 120)) - (h - 120)) // 2 * 2
        ys[ry : ry + 120, rx : rx + 160] = 220
        us[ry // 2 : ry // 2 + 60, rx // 2 : rx // 2 + 80] = 40
        vs[ry // 2 : ry // 2 + 60, rx // 2 : rx // 2 + 80] = (3 * i) % 256
        yield buf


def make_video(work: Path, minutes: float) -> Path:
    """The synthetic ``minutes``-long 1280x720 30 fps h264 mp4, generated once under ``work``."""
    import av

    path = work / f"long-{minutes:g}min-{WIDTH}x{HEIGHT}-{SOURCE_FPS}fps.mp4"
    if path.is_file():
        return path
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    count = int(round(minutes * 60 * SOURCE_FPS))
    t0 = time.perf_counter()
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=SOURCE_FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "28"}
        for arr in synthetic_frames(count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    seconds = time.perf_counter() - t0
    print(f"generated {path.name}: {count} frames in {seconds:.0f} s ({count / seconds:.0f} frames/s)",
          file=sys.stderr, flush=True)
    return path


# ---------------------------------------------------------------------------------------------- one measurement
def frame_size(cfg: object) -> tuple[int, int]:
    """(height, width) of a tokenizer config: its ``height``/``width``, or the square ``image_size``."""
    if hasattr(cfg, "height") and hasattr(cfg, "width"):
        return int(cfg.height), int(cfg.width)
    side = int(cfg.image_size)
    return side, side


def child(spec: dict) -> dict:
    """Decode or tokenize the whole video in this (fresh) process."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    base = proc_status()
    row: dict = {"minutes": spec["minutes"], "stage": spec["stage"], "base": base}
    t0 = time.perf_counter()
    if spec["stage"] == "decode":
        from ahri_core.video import iter_frames

        n = 0
        for _ in iter_frames(spec["video"], fps=spec["fps"], size=tuple(spec["decode_size"]), fit="pad"):
            n += 1
        row["size"] = list(spec["decode_size"])
    else:
        from ahri_core.checkpoint import save_weights
        from ahri_core.data.latents import read_latent_metadata
        from ahri_core.data.tokenize import tokenize_videos
        from ahri_core.models.tokenizer import build_tokenizer, preset_shape

        torch.manual_seed(0)
        size = spec.get("tokenizer_size") or preset_shape(spec["preset"], WIDTH / HEIGHT)
        model = build_tokenizer(spec["preset"], height=size[0], width=size[1]).eval()
        tmp = Path(tempfile.mkdtemp(prefix="ahri-long-"))
        weights = tmp / "runs" / "tok" / "model.safetensors"
        save_weights(weights, model, "tokenizer", model.cfg.to_dict())
        t0 = time.perf_counter()
        # what `ahri tokenize` runs: frames streamed, latents streamed to the file (LatentFileWriter)
        res = tokenize_videos(weights, [spec["video"]], tmp / "latents", batch_size=spec["batch_size"], device="cpu",
                              precision="fp32", cache_dir=tmp / "cache")
        if not res.ok:
            raise SystemExit(f"tokenize failed: {res.failed}")
        meta = read_latent_metadata(res.out_dir / f"{Path(spec['video']).stem}.safetensors") or {}
        n = int(meta.get("frames", 0))
        row.update(size=list(frame_size(model.cfg)), latent_shape=[n, model.cfg.tokens, model.cfg.channels],
                   latent_bytes=n * model.cfg.tokens * model.cfg.channels * 2, fps=float(model.cfg.fps),
                   content_box=meta.get("content_box"))
    seconds = time.perf_counter() - t0
    end = proc_status()
    row.update(frames=n, seconds=seconds, frames_per_s=n / max(seconds, 1e-9),
               source_frames_per_s=spec["minutes"] * 60 * SOURCE_FPS / max(seconds, 1e-9),
               end=end, vmhwm=end.get("VmHWM", 0))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[1.0, 2.0], help="video lengths (e.g. 10 30 60)")
    ap.add_argument("--stages", nargs="+", choices=["decode", "tokenize"], default=["decode", "tokenize"])
    ap.add_argument("--fps", type=float, default=20.0, help="the rate frames are read at when decoding")
    ap.add_argument("--decode-size", default="48x80", help="HxW of the decoded frames (letterboxed)")
    ap.add_argument("--preset", default="cpu", help="tokenizer preset")
    ap.add_argument("--tokenizer-size", default=None,
                    help="HxW of the tokenizer's frames (default: the preset's; needs a config with height/width)")
    ap.add_argument("--batch-size", type=int, default=64, help="frames per tokenizer batch")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0 = torch's default)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ahri-bench-long-video",
                    help="where the generated videos are kept for reruns")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    def hw(text: str) -> list[int]:
        h, _, w = text.lower().partition("x")
        return [int(h), int(w or h)]

    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    rows = []
    for minutes in sorted(args.minutes):
        path = make_video(args.work, minutes)
        for stage in args.stages:
            spec = dict(video=str(path), minutes=minutes, stage=stage, fps=args.fps,
                        decode_size=hw(args.decode_size), preset=args.preset, batch_size=args.batch_size,
                        tokenizer_size=hw(args.tokenizer_size) if args.tokenizer_size else None,
                        threads=args.threads)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, env=env)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
                rows.append({"minutes": minutes, "stage": stage, "error": tail[0]})
                print(f"{minutes:g} min {stage}: failed: {tail[0]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ok = [r for r in rows if "error" not in r]
    peaks = {s: [r["vmhwm"] for r in ok if r["stage"] == s] for s in args.stages}
    growth = {s: (max(p) - min(p)) if len(p) > 1 else 0 for s, p in peaks.items()}
    result = {
        "benchmark": "long_video",
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "settings": {"source": f"{WIDTH}x{HEIGHT} {SOURCE_FPS} fps h264 (x264 ultrafast, crf 28)",
                     "fps": args.fps, "decode_size": args.decode_size, "preset": args.preset,
                     "tokenizer_size": args.tokenizer_size, "batch_size": args.batch_size},
        "rows": rows,
        "peak_growth_bytes": growth,
        "target_peak_bytes": TARGET_PEAK,
        "within_target": bool(ok) and all(r["vmhwm"] < TARGET_PEAK for r in ok),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.json)

    print(f"long video: {result['settings']['source']}, read at {args.fps:g} fps; tokenizer preset {args.preset}; "
          f"{result['cpu']}, {result['cpu_count']} cores, torch {result['torch']}")
    print("| minutes | stage | frame size | frames | seconds | frames/s | source frames/s | peak RSS MiB |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['minutes']:g} | {r['stage']} | {r['error']} | | | | | |")
            continue
        size = "x".join(str(s) for s in r["size"])
        print(f"| {r['minutes']:g} | {r['stage']} | {size} | {r['frames']} | {r['seconds']:.1f} | "
              f"{r['frames_per_s']:.0f} | {r['source_frames_per_s']:.0f} | {r['vmhwm'] / MIB:.0f} |")
    for s, g in growth.items():
        p = peaks[s]
        if p:
            print(f"{s}: peak RSS {min(p) / MIB:.0f}-{max(p) / MIB:.0f} MiB over {len(p)} lengths "
                  f"(growth {g / MIB:.0f} MiB); target < {TARGET_PEAK / MIB:.0f} MiB: "
                  f"{'met' if max(p) < TARGET_PEAK else 'NOT met'}")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
