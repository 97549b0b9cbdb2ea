"""Peak memory of the dynamics loader against the size of the latent set: memory-mapped vs in memory.

A memory-mapped set (``load_latent_set(mmap=True)``, the default) leaves every video's latents in its file
and reads a window's frames when the window is taken, so the process's own memory should not grow with the
set; ``mmap=False`` reads the whole set into memory. This script builds a synthetic set of the largest size
asked for (one safetensors file per video, as ``ahri tokenize`` writes them, cached under ``--work``), makes
smaller sets of its first videos (index files pointing at the same files), and for each (size, mode) runs a
fresh subprocess that loads the set, runs ``--batches`` batches of windows through ``make_loader`` (and
``--train-steps`` steps of a tiny dynamics model on them), then optionally scans every frame for
non-finite values in chunks (``--scan``, what the pre-training check does).

What is measured (Linux ``/proc/self/status``; ``ru_maxrss`` is VmHWM):
- VmHWM: the peak resident set. It counts the mapped file pages a process has touched: they are page
  cache, shared and clean, which the kernel drops under memory pressure without any swap, so for a mapped
  set VmHWM grows with the frames read (a full scan touches every page) but the memory is not held;
- RssAnon: the process's own (anonymous) memory, sampled after every batch: this must stay flat;
- RssFile growth: mapped file pages resident at the end, less those at the start (torch's libraries).
The page cache is warm after the set is built (a cold read only changes the times).

Example:
    python benchmarks/bench_latent_memory.py --gb 0.25 0.5 1 2          # about 3 minutes on 2 cores
    python benchmarks/bench_latent_memory.py --gb 8 --in-memory-max-gb 0 --work /data/bench   # larger than RAM
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
from pathlib import Path

import torch

from ahri_core.runtime import cpu_name
from ahri_core.runtime import process_memory as proc_status

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latent_memory.json"
MIB = 1024 * 1024






def ru_maxrss() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


# ---------------------------------------------------------------------------------------------- the set
def build_videos(work: Path, gb: float, tokens: int, channels: int, frames: int) -> list[dict]:
    """Video files (fp16 latents, discrete actions) totalling ``gb`` GB of latents, cached in ``work/videos``."""
    from ahri_core.data.latents import write_latent_file

    per_frame = tokens * channels * 2
    count = max(1, round(gb * 1e9 / (frames * per_frame)))
    vdir = work / "videos"
    vdir.mkdir(parents=True, exist_ok=True)
    entries = []
    t0 = time.perf_counter()
    made = 0
    for i in range(count):
        path = vdir / f"v{i:05d}-{tokens}x{channels}-{frames}.safetensors"
        if not path.is_file():
            g = torch.Generator().manual_seed(i)
            lat = (torch.rand(frames, tokens, channels, generator=g) * 1.8 - 0.9).half()
            act = torch.randint(-1, 8, (frames,), generator=g)
            write_latent_file(path, lat, act, {"fps": "20", "video_id": path.stem, "frames": str(frames),
                                               "action_kind": "discrete", "action_count": "8"})
            made += 1
        entries.append({"id": path.stem, "file": str(Path("..") / "videos" / path.name), "frames": frames,
                        "fps": 20.0, "split": "val" if i % 10 == 9 else "train", "has_actions": True,
                        "action_kind": "discrete", "action_count": 8})
    if made:
        print(f"built {made} video files in {time.perf_counter() - t0:.0f} s ({vdir})", file=sys.stderr)
    return entries


def write_set(work: Path, entries: list[dict], gb: float, tokens: int, channels: int) -> Path:
    """A latent set (index.json) of the first videos of ``entries`` holding about ``gb`` GB of latents."""
    from ahri_core.data.index import INDEX_FORMAT, write_index

    per_video = entries[0]["frames"] * tokens * channels * 2
    n = max(2, min(len(entries), round(gb * 1e9 / per_video)))
    vids = entries[:n]
    if all(v["split"] == "val" for v in vids[:-1]) or not any(v["split"] == "train" for v in vids):
        vids = [{**v, "split": "train"} for v in vids]
    d = work / f"set-{gb:g}gb"
    d.mkdir(parents=True, exist_ok=True)
    write_index(d, {"format": INDEX_FORMAT, "tokenizer_id": "bench", "tokens": tokens, "channels": channels,
                    "fps": 20.0, "frame_size": 64, "action_kind": "discrete", "action_count": 8,
                    "frames": sum(v["frames"] for v in vids), "videos": vids})
    return d


# ---------------------------------------------------------------------------------------------- one measurement
def child(spec: dict) -> dict:
    """Load the set, run the loader (and training steps), scan; memory after each phase."""
    from ahri_core.data.windows import all_finite, load_latent_set, make_loader

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    base = proc_status()
    t0 = time.perf_counter()
    lset = load_latent_set(spec["set"], mmap=spec["mmap"])
    load_s = time.perf_counter() - t0
    after_load = proc_status()
    loader, _ = make_loader(lset.train, (spec["seq_len"], spec["batch_size"]), stride=spec["stride"],
                            seed=0, action_kind=lset.action_kind)
    model = opt = None
    if spec["train_steps"]:
        from ahri_core.models.dynamics import build_dynamics

        torch.manual_seed(0)
        model = build_dynamics("tiny", tokens=lset.tokens, channels=lset.channels)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    peak_anon, n, frames, steps, train_s = after_load.get("RssAnon", 0), 0, 0, 0, 0.0
    t0 = time.perf_counter()
    for batch in loader:
        if model is not None and steps < spec["train_steps"]:
            t1 = time.perf_counter()
            z = batch.latents
            B, T = z.shape[:2]
            tau = torch.rand(B, T)
            noisy = (1 - tau[..., None, None]) * torch.randn_like(z) + tau[..., None, None] * z
            loss = (model(noisy, tau, torch.full((B, T), 1.0 / model.config.k_max)).float() - z).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            train_s += time.perf_counter() - t1
        n += 1
        frames += batch.size * batch.frames
        peak_anon = max(peak_anon, proc_status().get("RssAnon", 0))
        if n >= spec["batches"] and steps >= spec["train_steps"]:
            break
    loop_s = time.perf_counter() - t0 - train_s  # the loader's own time
    after_loop = proc_status()
    row = {
        "gb": spec["gb"], "mmap": spec["mmap"], "videos": len(lset.train) + len(lset.val),
        "set_bytes": sum(v.frames for v in lset.train + lset.val) * lset.tokens * lset.channels * 2,
        "load_s": load_s, "batches": n, "train_steps": steps, "train_s": train_s, "frames_read": frames,
        "loop_s": loop_s, "batches_per_s": n / max(loop_s, 1e-9),
        "base": base, "after_load": after_load, "after_loop": after_loop,
        "peak_rss_anon": peak_anon, "vmhwm": after_loop.get("VmHWM", 0), "ru_maxrss": ru_maxrss(),
    }
    if spec["scan"]:
        t0 = time.perf_counter()
        peak = 0
        for v in lset.train + lset.val:
            if not all_finite(v.latents):
                raise SystemExit(f"video {v.id} holds non-finite latents")
            peak = max(peak, proc_status().get("RssAnon", 0))
        after_scan = proc_status()
        row.update(scan_s=time.perf_counter() - t0, after_scan=after_scan, scan_peak_rss_anon=peak,
                   scan_vmhwm=after_scan.get("VmHWM", 0))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0], help="set sizes (GB of latents)")
    ap.add_argument("--in-memory-max-gb", type=float, default=0.5,
                    help="also measure mmap=False at sizes up to this (it reads the whole set into memory)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--channels", type=int, default=12)
    ap.add_argument("--video-minutes", type=float, default=10.0, help="length of each synthetic video at 20 fps")
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=0, help="training steps of a tiny dynamics model per run")
    ap.add_argument("--scan", action="store_true", help="then check every frame for non-finite values (chunked)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0 = torch's default)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ahri-bench-latents",
                    help="where the synthetic set is built and kept for reruns")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    frames = int(round(args.video_minutes * 60 * 20))
    t0 = time.perf_counter()
    entries = build_videos(args.work, max(args.gb), args.tokens, args.channels, frames)
    build_s = time.perf_counter() - t0
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    # glibc: serve every block over 128 KiB by mmap and give it back on free, so the resident set follows
    # what is allocated instead of keeping freed heap pages
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    rows = []
    for gb in sorted(args.gb):
        path = write_set(args.work, entries, gb, args.tokens, args.channels)
        for mmap in (True, False):
            if not mmap and gb > args.in_memory_max_gb:
                continue
            spec = dict(set=str(path), gb=gb, mmap=mmap, batches=args.batches, batch_size=args.batch_size,
                        seq_len=args.seq_len, stride=args.stride, train_steps=args.train_steps, scan=args.scan,
                        threads=args.threads)
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, env=env)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
                rows.append({"gb": gb, "mmap": mmap, "error": tail[0]})
                print(f"{gb:g} GB mmap={mmap}: failed: {tail[0]}", file=sys.stderr)
                continue
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    result = {
        "benchmark": "latent_memory",
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": args.threads or torch.get_num_threads(),
        "settings": {"tokens": args.tokens, "channels": args.channels, "video_frames": frames,
                     "batches": args.batches, "batch_size": args.batch_size, "seq_len": args.seq_len,
                     "stride": args.stride, "train_steps": args.train_steps, "scan": args.scan,
                     "build_s": build_s},
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.json)

    print(f"dynamics loader memory: {args.tokens}x{args.channels} fp16 latents, videos of {frames} frames, "
          f"{args.batches} batches of {args.batch_size}x{args.seq_len} frames, {args.train_steps} training steps; "
          f"{result['cpu']}, {result['cpu_count']} cores, torch {result['torch']}")
    print("| set GB | mode | videos | load s | batches/s | VmHWM MiB | ru_maxrss MiB | RssAnon after load | "
          "peak RssAnon | RssFile growth | scan s | scan VmHWM | scan peak RssAnon | scan RssFile growth |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mode = "mmap" if r["mmap"] else "memory"
        if "error" in r:
            print(f"| {r['gb']:g} | {mode} | {r['error']} |" + " |" * 11)
            continue
        scan = (f"{r['scan_s']:.1f} | {r['scan_vmhwm'] / MIB:.0f} | {r['scan_peak_rss_anon'] / MIB:.0f} | "
                f"{(r['after_scan'].get('RssFile', 0) - r['base'].get('RssFile', 0)) / MIB:.0f}"
                if "scan_s" in r else "- | - | - | -")
        print(f"| {r['set_bytes'] / 1e9:.2f} | {mode} | {r['videos']} | {r['load_s']:.2f} | "
              f"{r['batches_per_s']:.0f} | {r['vmhwm'] / MIB:.0f} | {r['ru_maxrss'] / MIB:.0f} | "
              f"{r['after_load'].get('RssAnon', 0) / MIB:.0f} | {r['peak_rss_anon'] / MIB:.0f} | "
              f"{(r['after_loop'].get('RssFile', 0) - r['base'].get('RssFile', 0)) / MIB:.0f} | {scan} |")
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
