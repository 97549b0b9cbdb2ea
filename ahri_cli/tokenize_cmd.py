"""``ahri tokenize``: turn every video into packed latents with a trained tokenizer (or decode latents back)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ahri_core.errors import ConfigError

from .launch import NprocOption, launch_nproc
from .options import (
    DeviceOption,
    PrecisionChoice,
    PrecisionOption,
    ThreadsOption,
    either,
    existing_path,
    renamed,
    resolve_precision,
    setup_threads,
)
from .output import console, escape, info, next_step, out, result
from .progress import RichProgress
from .state import STATE


def tokenize(
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", "-t", help="Tokenizer: a run name in the workspace, a run directory or a weights file.")
    ],
    videos: Annotated[Path | None, typer.Option("--videos", help="Folder of videos (searched recursively). \\[default: <workspace>/videos]")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Latent root; files go to OUT/<tokenizer-id>/ (with --decode: the mp4 to "
                                                 "write). \\[default: <workspace>/latents; --decode: <file>.decoded.mp4]")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Frames encoded per batch.", min=1)] = 64,
    device: DeviceOption = "auto",
    precision: PrecisionOption = PrecisionChoice.auto,
    threads: ThreadsOption = None,
    val_fraction: Annotated[
        float | None, typer.Option("--val-fraction", help="Share of videos held out. \\[default: the tokenizer's own split setting]")
    ] = None,
    val_videos: Annotated[
        list[str] | None,
        typer.Option("--val-videos", metavar="ID", help="Hold out these video ids (repeatable; commas also separate ids) "
                     "instead of the hash split."),
    ] = None,
    split: Annotated[
        Path | None,
        typer.Option("--split", metavar="FILE", help='File naming the held-out videos: a JSON object with "val" (and optionally "train") '
                     'lists of ids, or text lines "val ID ..." / "train ID ...".'),
    ] = None,
    decode: Annotated[
        Path | None, typer.Option("--decode", help="Instead: decode this latent file back into an mp4 (see --out).")
    ] = None,
    nproc: NprocOption = None,
    data: Annotated[Path | None, typer.Option("--data", hidden=True, callback=renamed("--data", "--videos"))] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", hidden=True, callback=renamed("--output", "--out"))] = None,
) -> None:
    """Encode every video at the tokenizer's fps and size into one latent file per video, plus an index.

    A video slower than the tokenizer's fps keeps its own rate (frames are never repeated).
    Held out: the tokenizer's own split, or --val-fraction, --val-videos ID or --split FILE.

    Resumable: videos already done with the same tokenizer are skipped. A video that cannot be decoded is
    reported and skipped, and the command then exits with code 1.

    Several processes (one per GPU) share the videos: --nproc N, or torchrun (see docs/scaling.md).

    Example:  ahri tokenize --tokenizer tokenizer-20250101-120000
    """
    code = launch_nproc(nproc)
    if code is not None:
        raise typer.Exit(code)
    videos = either(videos, data, "--videos", "--data")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise ConfigError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    rule = chosen_split(val_videos, split, val_fraction)
    ws = STATE.workspace
    setup_threads(threads)
    if decode is not None:
        _decode(tokenizer, decode, either(out_dir, output, "--out", "--output"), batch_size, device or "auto", precision)
        return

    from ahri_core.data.tokenize import tokenize_videos
    from ahri_core.data.videos import find_videos

    root = existing_path(videos, "--data" if data is not None else "--videos", "video folder") if videos is not None else ws.videos
    if not root.exists():
        raise ConfigError(f"no videos: {root} does not exist (fetch some first: ahri fetch --source game)")
    found = find_videos(root)
    if not found:
        raise ConfigError(f"no videos under {root} (fetch some first: ahri fetch --source game)")
    dest = out_dir if out_dir is not None else ws.latents
    with RichProgress(console) as progress:
        res = tokenize_videos(
            tokenizer, found, dest, batch_size=batch_size, device=device or "auto", precision=precision.value,
            val_fraction=val_fraction, runs_dir=ws.runs, progress=progress, split=rule,
        )
    t = Table(title="latents", show_header=False)
    t.add_row("tokenized now", f"{len(res.written)} videos, {res.frames} frames, {res.frames_per_s:.0f} frames/s")
    t.add_row("already done", str(len(res.skipped)))
    t.add_row("failed", str(len(res.failed)))
    idx = res.index
    if idx:
        n_val = sum(1 for v in idx["videos"] if v["split"] == "val")
        rates = sorted({float(v.get("fps") or 0) for v in idx["videos"]}, reverse=True)
        at = f"{idx['fps']:g} fps" if idx.get("fps") else "mixed rates " + ", ".join(f"{r:g}" for r in rates) + " fps"
        how = "chosen" if idx.get("split_rule") == "chosen" else f"hash {idx.get('val_fraction')}"
        t.add_row("index", f"{len(idx['videos'])} videos ({n_val} val, {how}), {idx['frames']} frames, "
                  f"{idx['tokens']} tokens x {idx['channels']} channels at {at}")
    out.print(t)
    result(f"latents: {res.out_dir}")
    chosen = getattr(res, "precision", None)
    if isinstance(chosen, dict) and chosen.get("precision"):
        info(escape(f"precision {chosen['precision']} ({chosen.get('reason', '')})"))
    for note in getattr(res, "notes", []):
        info(f"[dim]note:[/] {escape(str(note))}")
    for vid, why in res.failed:
        console.print(f"[red]failed[/] {escape(str(vid))}: {escape(str(why))}", highlight=False, soft_wrap=True)
    if not res.ok:
        raise typer.Exit(1)
    hint = ["train", "--shortcut", "--alternating", "--long-ratio", "0.1", "--minutes", "30"]
    if out_dir is not None:
        hint += ["--latents", str(res.out_dir)]
    next_step(*hint)


def chosen_split(val_videos: list[str] | None, split: Path | None, val_fraction: float | None = None):
    """The ``SplitRule`` of ``--val-videos`` / ``--split`` (None when neither is given); conflicts refused."""
    from ahri_core.data.split import SplitRule

    ids = [i.strip() for v in (val_videos or []) for i in v.split(",") if i.strip()]
    if val_videos is not None and not ids:
        raise ConfigError("--val-videos: give at least one video id")
    if ids and split is not None:
        raise ConfigError("--split and --val-videos both choose the held-out videos; give one of them")
    if (ids or split is not None) and val_fraction is not None:
        raise ConfigError("--val-fraction and --val-videos/--split both decide the split; give one of them")
    if split is not None:
        return SplitRule.from_file(split.expanduser().resolve())
    return SplitRule.chosen(ids) if ids else None


def _decode(
    tokenizer: str, path: Path, output: Path | None, batch_size: int, device: str, precision: PrecisionChoice
) -> None:
    from ahri_core.data.frames import to_uint8
    from ahri_core.data.latents import read_latent_file
    from ahri_core.data.tokenize import load_decoder
    from ahri_core.models.tokenizer import decode_latents
    from ahri_core.video import write_video

    if not path.is_file():
        raise ConfigError(f"--decode {path}: no such latent file")
    lat, _, meta = read_latent_file(path)
    model = load_decoder(tokenizer, STATE.workspace.runs, device)
    if tuple(lat.shape[1:]) != (model.cfg.tokens, model.cfg.channels):
        raise ConfigError(
            f"--decode {path}: latents {tuple(lat.shape[1:])} do not fit tokenizer ({model.cfg.tokens}, {model.cfg.channels})"
        )
    prec = resolve_precision(precision, next(model.parameters()).device)
    frames = decode_latents(model, lat.float(), batch_size=batch_size, precision=prec)
    dest = output if output is not None else Path(f"{path.stem}.decoded.mp4")
    fps = float(meta.get("fps") or model.cfg.fps)
    write_video(dest, to_uint8(frames), fps)
    result(f"wrote {dest} ({len(frames)} frames at {fps:g} fps)")


def register(app: typer.Typer) -> None:
    app.command("tokenize")(tokenize)
