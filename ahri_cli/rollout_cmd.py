"""``ahri rollout``: dream the continuation of a video clip and write it as an mp4."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ahri_core.config.base import load
from ahri_core.config.settings import SamplingSettings
from ahri_core.errors import ConfigError

from .options import (
    DeviceOption,
    PrecisionChoice,
    PrecisionOption,
    TauCtxOption,
    ThreadsOption,
    TokenizerOption,
    either,
    existing_path,
    renamed,
    run_or_path,
    setup_threads,
)
from .output import console, escape, info, out, result
from .progress import RichProgress
from .state import STATE

DEFAULT_HORIZON = 32


def rollout(
    clip: Annotated[Path, typer.Argument(help="Any video file; it is resampled to the model's fps and size.")],
    steps: Annotated[int | None, typer.Option("--steps", help="Denoising steps per frame (power of two). \\[default: 4]")] = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Dynamics run (name or path). Default: the latest finished one.")
    ] = None,
    context: Annotated[int | None, typer.Option("--context", help="Frames of the clip given as context. \\[default: 16]")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Frames to predict. \\[default: 32]")] = None,
    tau_ctx: TauCtxOption = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Output mp4. \\[default: <clip>-steps<K>.mp4 in the run's rollouts folder]")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampling seed. \\[default: 0]")] = None,
    tokenizer: TokenizerOption = None,
    scale: Annotated[int, typer.Option("--scale", help="Upscale factor of the written video.", min=1, max=16)] = 4,
    actions: Annotated[
        str | None,
        typer.Option("--actions", metavar="A,A,...", help="Actions of the predicted frames, in order: latent codes "
                     "(latent-action runs; names of the run's action map work too) or action ids; -1 = no action."),
    ] = None,
    actions_from: Annotated[
        Path | None,
        typer.Option("--actions-from", metavar="VIDEO", help="Latent-action runs: steer with the latent codes "
                     "inferred from this video's frames at the same positions."),
    ] = None,
    device: DeviceOption = "auto",
    precision: PrecisionOption = PrecisionChoice.auto,
    threads: ThreadsOption = None,
    model: Annotated[str | None, typer.Option("--model", hidden=True, callback=renamed("--model", "--run"))] = None,
) -> None:
    """Predict what happens after the first --context frames of a clip; predicted frames have a red border.

    Example:  ahri rollout clip.mp4 --steps 4 --horizon 32
    """
    from ahri_core.inference.rollout import rollout_clip
    from ahri_core.inference.world import load_world_model
    from ahri_core.runtime import resolve_device

    flags = dict(steps=[steps] if steps is not None else None, context=context, horizon=horizon, tau_ctx=tau_ctx, seed=seed)
    s = load(SamplingSettings, flags, STATE.config)
    if len(s.steps) != 1:
        raise ConfigError(f"rollout takes one step count, got sampling.steps={s.steps}; pass --steps K")
    h = s.horizon if (horizon is not None or "horizon" in s.model_fields_set) else DEFAULT_HORIZON
    clip = existing_path(clip, "CLIP", "video file")
    if clip.is_dir():
        raise ConfigError(f"CLIP {clip}: a folder; give one video file")
    tok = run_or_path(tokenizer, "--tokenizer")
    setup_threads(threads)
    dev = resolve_device(device or "auto")
    if actions is not None and actions_from is not None:
        raise ConfigError("give --actions or --actions-from, not both")
    if actions_from is not None:
        actions_from = existing_path(actions_from, "--actions-from", "video file")
    world = load_world_model(either(run, model, "--run", "--model"), STATE.workspace, tokenizer=tok, device=dev)
    future = None
    if actions is not None:
        from ahri_core.train.action_map import parse_action_tokens

        future = parse_action_tokens(actions, world.code_count, world.action_names())
    with RichProgress(console, transient=True) as progress:
        rep = rollout_clip(
            clip, world, steps=s.steps[0], context=s.context, horizon=h, tau_ctx=s.tau_ctx, out=out_path,
            seed=s.seed, scale=scale, precision=precision.value, progress=progress, future=future,
            codes_from=actions_from,
        )
    if rep.future_actions and rep.actions_source != "none":
        shown = ",".join(map(str, rep.future_actions[:24])) + ("..." if len(rep.future_actions) > 24 else "")
        info(escape(f"actions of the predicted frames ({rep.actions_source}): {shown}"))
    if getattr(rep, "precision", ""):
        info(escape(f"precision {rep.precision} ({getattr(rep, 'precision_reason', '')})"))
    line = (
        f"{rep.horizon} frames predicted with {rep.steps} steps by {rep.run}: "
        f"{rep.frames_per_s:.1f} frames/s sampling, {rep.end_to_end_frames_per_s:.1f} frames/s end to end"
    )
    result(line)
    if rep.compared:
        k = min(8, rep.compared)
        p = sum(rep.psnr[:k]) / k
        c = sum(rep.copy_last_psnr[:k]) / k
        out.print(f"PSNR over the first {k} predicted frames: {p:.2f} dB (copy last frame: {c:.2f} dB)", highlight=False)
    result(
        f"wrote {rep.out} ({rep.frames_written} frames, {rep.size[1]}x{rep.size[0]}, {rep.fps:g} fps"
        f"{', truth on the left' if rep.compared else ''})"
    )


def register(app: typer.Typer) -> None:
    app.command("rollout")(rollout)
