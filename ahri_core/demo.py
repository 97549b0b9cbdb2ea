"""``ahri demo``: the whole flow on a fresh machine with no network, inside a time budget.

Stages: render built-in game clips (``videos/game``), train the tokenizer, tokenize the clips into a latent
set, train the dynamics model (shortcut forcing, alternating lengths), evaluate it on held-out clips at 4 and
64 steps next to copy-last-frame and the tokenizer ceiling, and roll out one held-out clip. The two training
stages share what the budget leaves after the fixed stages: the rendering and the tokenize pass are
measured as they run, and the evaluation's cost is reserved up front (``eval_share`` of the budget).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .config.settings import (
    DataSettings,
    DemoSettings,
    DiffusionSettings,
    FetchSettings,
    SamplingSettings,
    TrainSettings,
)
from .errors import ConfigError, DataError
from .fileio import write_json_atomic
from .progress import Progress, ensure
from .workspace import Workspace

MIN_TRAIN_SECONDS = 5  # the least a training stage gets, even when the budget is already spent
STAGES = ("game clips", "tokenizer", "tokenize", "dynamics", "evaluate", "rollout")


@dataclass
class DemoResult:
    summary: dict[str, Any]
    path: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self, minutes: float) -> None:
        self.t0 = time.monotonic()
        self.budget = 60.0 * minutes

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def _sampling_calls(s: DemoSettings) -> tuple[int, int]:
    """Model calls of the evaluation (batched over its clips) and of the one-clip rollout."""
    eval_calls = sum(s.context + (k + 1) * s.horizon for k in s.steps)
    rollout_calls = s.context + (min(s.steps) + 1) * s.rollout_horizon
    return eval_calls, rollout_calls


def estimate_sampling_seconds(s: DemoSettings, config, trials: int = 5, cache_dir: Any = None) -> float:
    """Seconds the evaluation and the rollout will take with a model of ``config`` on this machine.

    Times a few KV-cached single-frame calls at the evaluation's batch size (and at batch 1 for the rollout)
    on an untrained model of the same shape (speed does not depend on the weights), and adds decoding.
    """
    import torch

    from .models.dynamics import DynamicsModel
    from .runtime import autocast, choose_precision

    model = DynamicsModel(config).eval()
    ctx_len = min(s.context, config.max_frames - 1)
    cpu = torch.device("cpu")

    @torch.inference_mode()
    def one_call(precision: str) -> None:
        z = torch.randn(s.eval_clips, 2, config.tokens, config.channels)
        with autocast(cpu, precision):
            model(z, torch.full((s.eval_clips, 2), 0.5), torch.full((s.eval_clips, 2), 1.0 / config.k_max))

    precision = choose_precision(s.precision, cpu, step=one_call, key=f"demo sampling {config.weights_fields()}",
                                 cache_dir=cache_dir).precision

    @torch.inference_mode()
    def per_call(batch: int) -> float:
        z = torch.randn(batch, 1, config.tokens, config.channels)
        tau, step = torch.full((batch, 1), 0.5), torch.full((batch, 1), 1.0 / config.k_max)
        cache = model.new_cache(batch, config.max_frames)
        times = []
        with autocast(cpu, precision):
            for _ in range(ctx_len):
                model.step(z, tau, step, None, cache, True)
            for _ in range(trials):
                t = time.perf_counter()
                model.step(z, tau, step, None, cache, False)
                times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    eval_calls, rollout_calls = _sampling_calls(s)
    seconds = eval_calls * per_call(s.eval_clips) + rollout_calls * per_call(1)
    return 1.25 * seconds + 10.0  # decoding, metrics, plots and videos


def _tokenize(tokenizer_run: Path, videos: list, out_root: Path, val_fraction: float, progress: Progress,
              precision: str = "auto") -> Path:
    """Tokenize ``videos`` with the tokenizer stage's library function; returns the latent set directory."""
    from .data.tokenize import tokenize_videos

    res = tokenize_videos(tokenizer_run, videos, out_root, val_fraction=val_fraction, progress=progress,
                          precision=precision)
    if not res.ok:
        raise DataError(f"tokenizing the game clips failed: {res.failed[0][0]}: {res.failed[0][1]}")
    return Path(res.out_dir)


class _Stages:
    """The demo's progress line and the seconds each stage took."""

    def __init__(self, clock: _Clock, prog: Progress) -> None:
        self.clock, self.prog = clock, prog
        self.times: dict[str, float] = {}

    def start(self, name: str) -> float:
        self.prog.advance("demo", 0, stage=name, left_s=round(max(self.clock.left(), 0)))
        return time.monotonic()

    def done(self, name: str, t: float) -> None:
        self.times[name] = time.monotonic() - t
        self.prog.advance("demo", 1, stage=name, left_s=round(max(self.clock.left(), 0)))


def _check_settings(s: DemoSettings) -> None:
    for k in s.steps:
        if k > s.k_max:
            raise ConfigError(f"demo.steps {k} is finer than demo.k_max {s.k_max}")
    if s.context + s.horizon > s.frames:
        raise ConfigError(f"demo.context + demo.horizon ({s.context + s.horizon}) exceeds demo.frames ({s.frames})")


def _render_clips(s: DemoSettings, ws: Workspace, prog: Progress) -> list:
    """Stage 1: the built-in game clips under ``videos/game``; returns their records."""
    from .sources import record_game
    from .sources.store import list_videos

    dest = ws.source_dir("game")
    fetch = record_game(dest, count=s.clips, frames=s.frames, size=s.size, seed=s.seed,
                        settings=FetchSettings(), progress=prog)
    if not fetch.ok:
        raise DataError(f"rendering the built-in game failed: {fetch.failed[0]}")
    wanted = {r.id for r in fetch.stored} | set(fetch.skipped)
    videos = [v for v in list_videos(dest) if v.id in wanted]
    if len(videos) < 2:
        raise DataError(f"the demo needs at least 2 game clips, got {len(videos)}")
    return videos


def _sampling_reserve(s: DemoSettings, ws: Workspace, clock: _Clock) -> float:
    """Seconds kept for sampling (eval + rollout): measured on a model of the demo's shape on this machine,
    at least ``eval_share`` of the budget."""
    from .models.dynamics import dynamics_config
    from .models.tokenizer import tokenizer_config

    tcfg = tokenizer_config(s.tokenizer_preset, image_size=s.size)
    shape = dynamics_config(s.dynamics_preset, tokens=tcfg.tokens, channels=tcfg.channels, k_max=s.k_max,
                            max_frames=max(s.seq_len_short, s.seq_len_long), latent_grid=tcfg.token_grid)
    return max(estimate_sampling_seconds(s, shape, cache_dir=ws.cache), s.eval_share * clock.budget)


def _train_tokenizer(s: DemoSettings, ws: Workspace, videos: list, name: str, clock: _Clock, reserve_eval: float,
                     prog: Progress) -> tuple[dict[str, Any], float]:
    """Stage 2: the tokenizer gets its share of what is left after the reserve and a tokenize allowance;
    returns (its training summary, the minutes it was given)."""
    from .config.settings import TokenizerSettings
    from .train.tokenizer import train_tokenizer

    tokenize_allow = max(5.0, 0.03 * clock.budget)
    train_left = clock.left() - reserve_eval - tokenize_allow
    if train_left < MIN_TRAIN_SECONDS * 2:
        prog.log(
            f"demo.minutes={s.minutes:g} leaves {max(train_left, 0):.0f} s to train on this machine; each training "
            f"stage gets {MIN_TRAIN_SECONDS} s and the demo will run over its budget"
        )
    tok_minutes = max(s.tokenizer_share * train_left, MIN_TRAIN_SECONDS) / 60
    ttrain = TrainSettings(stage="tokenizer", preset=s.tokenizer_preset, run=name, minutes=tok_minutes,
                           max_steps=s.tokenizer_max_steps,
                           seed=s.seed, val_every=10**9, checkpoint_every=10**9, log_every=20, precision=s.precision,
                           **({"batch_size": s.tokenizer_batch_size} if s.tokenizer_batch_size else {}))
    tok_summary = train_tokenizer(ws.run_dir(name), videos, ttrain,
                                  TokenizerSettings(size=s.size, val_fraction=s.val_fraction, val_frames=64,
                                                    mask_max=s.tokenizer_mask_max), progress=prog)
    if tok_summary.get("stopped"):  # Ctrl-C / SIGTERM: the trainer saved a checkpoint; stop the demo too
        raise KeyboardInterrupt
    return tok_summary, tok_minutes


def _train_dynamics(s: DemoSettings, ws: Workspace, lat_dir: Path, name: str, clock: _Clock, reserve_eval: float,
                    prog: Progress) -> tuple[Any, float]:
    """Stage 4: the dynamics model gets everything left but what sampling will take; returns (its result,
    the minutes it was given)."""
    from .data.windows import load_latent_set
    from .train.dynamics import train_dynamics

    ddata = DataSettings(alternating=True, seq_len_short=s.seq_len_short, seq_len_long=s.seq_len_long,
                         batch_size_short=s.batch_size_short, batch_size_long=s.batch_size_long,
                         long_ratio=s.long_ratio, stride=s.stride, val_fraction=s.val_fraction)
    ddiff = DiffusionSettings(shortcut=True, k_max=s.k_max, single_image_fraction=s.single_image_fraction)
    dtrain = TrainSettings(stage="dynamics", preset=s.dynamics_preset, run=name, minutes=1.0,
                           max_steps=s.dynamics_max_steps,
                           seed=s.seed, lr=s.dynamics_lr, ema=s.dynamics_ema, warmup_steps=50, val_every=10**9,
                           precision=s.precision,
                           checkpoint_every=10**9, log_every=20)
    lset = load_latent_set(lat_dir)
    dyn_minutes = max(clock.left() - reserve_eval - 0.02 * clock.budget, MIN_TRAIN_SECONDS) / 60
    dtrain = dtrain.model_copy(update={"minutes": dyn_minutes})
    dyn = train_dynamics(lset, ws.run_dir(name), train=dtrain, data=ddata, diffusion=ddiff, progress=prog)
    if dyn.stopped:
        raise KeyboardInterrupt
    return dyn, dyn_minutes


def _evaluate(s: DemoSettings, ws: Workspace, dyn_name: str, tok_name: str, lat_dir: Path,
              prog: Progress) -> tuple[Any, Any]:
    """Stage 5: the world model (dynamics + tokenizer) and its evaluation on held-out clips."""
    from .eval.evaluate import evaluate
    from .inference.world import load_world_model

    world = load_world_model(ws.run_dir(dyn_name), ws, tokenizer=ws.run_dir(tok_name))
    samp = SamplingSettings(steps=s.steps, context=s.context, horizon=s.horizon, tau_ctx=s.tau_ctx,
                            clips=s.eval_clips, seed=s.seed, batch_size=max(1, s.eval_clips))
    report = evaluate(world, lat_dir, samp, workspace=ws, samples=s.samples, progress=prog, precision=s.precision,
                      probes=False)  # the probes are not in the eval-time reserve
    return world, report


def _rollout(s: DemoSettings, videos: list, world: Any, report: Any, prog: Progress) -> Any:
    """Stage 6: roll out one held-out clip (the first evaluation clip's video); None when it is not found."""
    from .inference.rollout import rollout_clip

    held = report.metrics["clips"][0]["video"]
    clip_path = next((v.path for v in videos if v.id == held), None)
    if clip_path is None:
        return None
    ctx = min(s.context, max(1, s.frames - 1))
    return rollout_clip(clip_path, world, steps=min(s.steps), context=ctx, horizon=s.rollout_horizon,
                        tau_ctx=s.tau_ctx, seed=s.seed, progress=prog, precision=s.precision)


def _eval_summary(s: DemoSettings, m: dict[str, Any]) -> dict[str, Any]:
    """The evaluation's part of the summary: PSNR per step count next to copy-last and the tokenizer ceiling."""
    near = min(8, s.horizon)
    psnr = m["summary"][f"psnr_h1_{near}"]
    lo, hi = min(s.steps), max(s.steps)
    return {
        "horizon_avg": f"h1-{near}",
        "psnr": {f"{k} steps": psnr[f"steps_{k}"] for k in s.steps},
        "copy_last_psnr": psnr["copy_last"],
        "tokenizer_ceiling_psnr": psnr["tokenizer_ceiling"],
        "gain_over_copy_last_db": {f"{k} steps": psnr[f"steps_{k}"] - psnr["copy_last"] for k in s.steps},
        "gap_db": psnr[f"steps_{lo}"] - psnr[f"steps_{hi}"],
        "frames_per_s": {f"{k} steps": m["steps"][str(k)]["frames_per_s"] for k in s.steps},
    }


def run_demo(
    settings: DemoSettings | None = None,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Run every stage inside ``settings.minutes``; returns the summary (also written as JSON)."""
    s = settings or DemoSettings()
    ws = workspace or Workspace.resolve()
    prog = ensure(progress)
    _check_settings(s)
    clock = _Clock(s.minutes)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    tok_name, dyn_name = f"demo-tokenizer-{stamp}", f"demo-dynamics-{stamp}"
    summary: dict[str, Any] = {"started": datetime.now().isoformat(timespec="seconds"), "settings": s.model_dump()}
    prog.start("demo", total=len(STAGES))
    stages = _Stages(clock, prog)

    t = stages.start(STAGES[0])
    videos = _render_clips(s, ws, prog)
    stages.done(STAGES[0], t)
    reserve_eval = _sampling_reserve(s, ws, clock)

    t = stages.start(STAGES[1])
    tok_summary, tok_minutes = _train_tokenizer(s, ws, videos, tok_name, clock, reserve_eval, prog)
    stages.done(STAGES[1], t)

    t = stages.start(STAGES[2])
    lat_dir = _tokenize(ws.run_dir(tok_name), videos, ws.latents, s.val_fraction, prog, s.precision)
    stages.done(STAGES[2], t)

    t = stages.start(STAGES[3])
    dyn, dyn_minutes = _train_dynamics(s, ws, lat_dir, dyn_name, clock, reserve_eval, prog)
    stages.done(STAGES[3], t)

    t = stages.start(STAGES[4])
    world, report = _evaluate(s, ws, dyn_name, tok_name, lat_dir, prog)
    stages.done(STAGES[4], t)

    t = stages.start(STAGES[5])
    ro = _rollout(s, videos, world, report, prog)
    stages.done(STAGES[5], t)
    prog.finish("demo")

    m = report.metrics
    ev = _eval_summary(s, m)
    summary.update({
        "finished": datetime.now().isoformat(timespec="seconds"),
        "minutes_budget": s.minutes,
        "minutes_used": clock.elapsed() / 60,
        "stage_seconds": stages.times,
        "workspace": str(ws.root),
        "videos": len(videos),
        "tokenizer": {"run": str(ws.run_dir(tok_name)), "steps": tok_summary.get("step"),
                      "val_psnr": tok_summary.get("val_psnr"), "minutes": tok_minutes},
        "latents": str(lat_dir),
        "dynamics": {"run": str(dyn.run_dir), "steps": dyn.step, "minutes": dyn_minutes, "val": dyn.val},
        "sampling_reserve_s": reserve_eval,
        "eval": {"dir": str(report.out_dir), "clips": m["clip_count"], **ev,
                 "plot": m["files"]["plot"], "videos": m["files"]["videos"]},
        "rollout": ro.to_dict() if ro is not None else None,
    })
    lo, hi = min(s.steps), max(s.steps)
    gain = summary["eval"]["gain_over_copy_last_db"][f"{lo} steps"]
    summary["acceptance"] = {
        f"{lo}_steps_beats_copy_last_by_1db": bool(gain >= 1.0),
        f"{lo}_within_0.5db_of_{hi}": bool(summary["eval"]["gap_db"] >= -0.5),
        "within_budget": bool(clock.elapsed() <= clock.budget),
    }
    path = Path(dyn.run_dir) / "demo-summary.json"
    write_json_atomic(path, summary)
    return DemoResult(summary=json.loads(json.dumps(summary, default=str)), path=path, stage_seconds=stages.times)
