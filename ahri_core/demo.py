"""``ahri demo``: the whole flow on a fresh machine with no network, inside a time budget.

Stages: render built-in game clips (``videos/game``), train the tokenizer, tokenize the clips into a latent
set, train the dynamics model (shortcut forcing, alternating lengths), evaluate it on held-out clips at 4 and
64 steps next to copy-last-frame and the tokenizer ceiling, and roll out one held-out clip. The two training
stages share what the budget leaves after the fixed stages: the rendering and the tokenize pass are
measured as they run, and the evaluation's cost is reserved up front (``eval_share`` of the budget).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
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
from .demo_state import FlowState
from .errors import ConfigError, DataError
from .fileio import write_json_atomic
from .progress import Progress, ensure
from .workspace import Workspace

MIN_TRAIN_SECONDS = 5  # the least a training stage gets, even when the budget is already spent
STAGES = ("game clips", "tokenizer", "tokenize", "dynamics", "evaluate", "rollout")
VIDEO_STAGES = ("import videos", *STAGES[1:])  # the flow on one's own videos


@dataclass
class DemoResult:
    summary: dict[str, Any]
    path: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self, minutes: float, before: float = 0.0) -> None:
        self.t0 = time.monotonic() - before  # ``before``: seconds the earlier sessions of the flow spent
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
        raise DataError(f"tokenizing the videos failed: {res.failed[0][0]}: {res.failed[0][1]}")
    return Path(res.out_dir)


class _Stages:
    """The demo's progress line, and each stage run once over the flow's sessions: a stage the flow's record
    holds is skipped, one that ends (or stops) adds its seconds to the record, which is then written."""

    def __init__(self, names: tuple[str, ...], clock: _Clock, prog: Progress, state: FlowState) -> None:
        self.names, self.clock, self.prog, self.state = names, clock, prog, state

    def _advance(self, name: str, amount: int) -> None:
        self.prog.advance("demo", amount, stage=name, left_s=round(max(self.clock.left(), 0)))

    def run(self, index: int, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        name = self.names[index]
        done = self.state.done(name)
        if done is not None:
            self._advance(name, 1)
            return done
        self._advance(name, 0)
        t = time.monotonic()
        try:
            outputs = work()
        except BaseException:  # Ctrl-C (or a failure): run_demo writes the record with the time spent
            self.state.add_seconds(name, time.monotonic() - t)
            raise
        self.state.add_seconds(name, time.monotonic() - t)
        self.state.mark(name, outputs)
        self.state.save(self.clock.elapsed())
        self._advance(name, 1)
        return outputs

    def seconds(self) -> dict[str, float]:
        spent = self.state.seconds()
        return {n: spent[n] for n in self.names if n in spent}


def _check_settings(s: DemoSettings, own_videos: bool = False) -> None:
    for k in s.steps:
        if k > s.k_max:
            raise ConfigError(f"demo.steps {k} is finer than demo.k_max {s.k_max}")
    if not own_videos and s.context + s.horizon > s.frames:
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


def _sampling_reserve(s: DemoSettings, ws: Workspace, clock: _Clock, tcfg: Any) -> float:
    """Seconds kept for sampling (eval + rollout): measured on a model of the demo's shape on this machine
    (``tcfg``: the tokenizer's config), at least ``eval_share`` of the budget."""
    from .models.dynamics import dynamics_config

    shape = dynamics_config(s.dynamics_preset, tokens=tcfg.tokens, channels=tcfg.channels, k_max=s.k_max,
                            max_frames=max(s.seq_len_short, s.seq_len_long), latent_grid=tcfg.token_grid)
    return max(estimate_sampling_seconds(s, shape, cache_dir=ws.cache), s.eval_share * clock.budget)


def _tokenizer_minutes(s: DemoSettings, clock: _Clock, reserve_eval: float, prog: Progress) -> float:
    """The tokenizer's share of what is left after the sampling reserve and a tokenize allowance."""
    tokenize_allow = max(5.0, 0.03 * clock.budget)
    train_left = clock.left() - reserve_eval - tokenize_allow
    if train_left < MIN_TRAIN_SECONDS * 2:
        prog.log(
            f"demo.minutes={s.minutes:g} leaves {max(train_left, 0):.0f} s to train on this machine; each training "
            f"stage gets {MIN_TRAIN_SECONDS} s and the demo will run over its budget"
        )
    return max(s.tokenizer_share * train_left, MIN_TRAIN_SECONDS) / 60


def _train_tokenizer(s: DemoSettings, ws: Workspace, videos: list, name: str, minutes: float, tok: Any,
                     resume: bool, prog: Progress) -> dict[str, Any]:
    """Stage 2: train (or continue, with ``resume``) the tokenizer for ``minutes``; returns its summary."""
    from .train.tokenizer import train_tokenizer

    ttrain = TrainSettings(stage="tokenizer", preset=s.tokenizer_preset, run=name, minutes=minutes,
                           max_steps=s.tokenizer_max_steps, resume=resume,
                           seed=s.seed, val_every=10**9, checkpoint_every=10**9, log_every=20, precision=s.precision,
                           **({"batch_size": s.tokenizer_batch_size} if s.tokenizer_batch_size else {}))
    tok_summary = train_tokenizer(ws.run_dir(name), videos, ttrain, tok, progress=prog)
    if tok_summary.get("stopped"):  # Ctrl-C / SIGTERM: the trainer saved a checkpoint; stop the demo too
        raise KeyboardInterrupt
    return tok_summary


def _train_dynamics(s: DemoSettings, ws: Workspace, lat_dir: Path, name: str, minutes: float, resume: bool,
                    latent_actions: bool, prog: Progress) -> Any:
    """Stage 4: train (or continue) the dynamics model for ``minutes``, with latent actions when asked."""
    from .config.settings import LatentActionSettings
    from .data.windows import load_latent_set
    from .train.dynamics import train_dynamics

    ddata = DataSettings(alternating=True, seq_len_short=s.seq_len_short, seq_len_long=s.seq_len_long,
                         batch_size_short=s.batch_size_short, batch_size_long=s.batch_size_long,
                         long_ratio=s.long_ratio, stride=s.stride, val_fraction=s.val_fraction)
    ddiff = DiffusionSettings(shortcut=True, k_max=s.k_max, single_image_fraction=s.single_image_fraction)
    dtrain = TrainSettings(stage="dynamics", preset=s.dynamics_preset, run=name, minutes=minutes,
                           max_steps=s.dynamics_max_steps, resume=resume,
                           seed=s.seed, lr=s.dynamics_lr, ema=s.dynamics_ema, warmup_steps=50, val_every=10**9,
                           precision=s.precision,
                           checkpoint_every=10**9, log_every=20)
    lset = load_latent_set(lat_dir)
    lam = LatentActionSettings(enabled=True) if latent_actions else None
    dyn = train_dynamics(lset, ws.run_dir(name), train=dtrain, data=ddata, diffusion=ddiff, progress=prog,
                         latent_actions=lam)
    if dyn.stopped:
        raise KeyboardInterrupt
    return dyn


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


def _rollout(s: DemoSettings, videos: list, world: Any, metrics: dict[str, Any], prog: Progress) -> Any:
    """Stage 6: roll out one held-out clip (the first evaluation clip's video); None when it is not found."""
    from .inference.rollout import rollout_clip

    held = metrics["clips"][0]["video"]
    clip_path = next((v.path for v in videos if v.id == held), None)
    if clip_path is None:
        return None
    # the settings check (built-in clips) and the held-out length check (own videos) keep context < frames
    return rollout_clip(clip_path, world, steps=min(s.steps), context=s.context, horizon=s.rollout_horizon,
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


class _Flow:
    """One call of the demo: the stages in order over the flow's record (see the module docstring)."""

    def __init__(self, s: DemoSettings, ws: Workspace, prog: Progress, state: FlowState, source: str | None,
                 fetch: FetchSettings | None) -> None:
        self.s, self.ws, self.prog, self.state, self.source = s, ws, prog, state, source
        self.fetch = fetch or FetchSettings()
        self.clock = _Clock(s.minutes, state.elapsed_before)
        self.stages = _Stages(STAGES if source is None else VIDEO_STAGES, self.clock, prog, state)
        self.tok_name, self.dyn_name = f"demo-tokenizer-{state.stamp}", f"demo-dynamics-{state.stamp}"
        self.videos: list | None = None
        self.world: Any = None
        self.metrics: dict[str, Any] | None = None

    def _tok_settings(self) -> Any:
        """The tokenizer's settings: the demo's square size for the built-in game; one's own videos keep their
        aspect at the preset's pixel budget unless ``[demo] size`` is set."""
        from .config.settings import TokenizerSettings

        s = self.s
        size = s.size if self.source is None or "size" in s.model_fields_set else None
        return TokenizerSettings(size=size, val_fraction=s.val_fraction, val_frames=64, mask_max=s.tokenizer_mask_max)

    def _tok_config(self, videos: list) -> Any:
        from .models.tokenizer import tokenizer_config
        from .train.tokenizer import new_config

        if self.source is None:
            return tokenizer_config(self.s.tokenizer_preset, image_size=self.s.size)
        return new_config(self.s.tokenizer_preset, self._tok_settings(), videos)

    def first_stage(self) -> dict[str, Any]:
        """Stage 1: the built-in game clips, or one's own videos imported; the held-out videos chosen."""
        from .demo_videos import check_lengths, held_out, import_videos

        s, failed = self.s, []
        if self.source is None:
            videos, dest = _render_clips(s, self.ws, self.prog), self.ws.source_dir("game")
        else:
            videos, dest, failed = import_videos(self.source, self.ws.videos, self.fetch, self.prog)
        ids = [v.id for v in videos]
        val = held_out(ids, s.val_fraction)
        if self.source is not None:
            check_lengths(videos, val, self._tok_config(videos).fps, s.context + s.horizon)
        self.videos = videos
        actions = any(bool(v.meta.get("actions_file")) for v in videos)
        shown = ", ".join(val[:8]) + (", ..." if len(val) > 8 else "")
        self.prog.log(f"held out for validation and the evaluation: {len(val)} of {len(ids)} videos ({shown})")
        if self.source is not None and not actions:
            self.prog.log("the videos carry no actions: the dynamics model learns latent actions from them")
        return {"dest": str(dest), "videos": ids, "held_out": val, "failed": [list(f) for f in failed],
                "actions": actions}

    def records(self, first: dict[str, Any]) -> list:
        """The flow's videos (listed again when an earlier session imported them)."""
        if self.videos is None:
            from .sources.store import list_videos

            wanted = set(first["videos"])
            dest = Path(first["dest"])
            self.videos = [v for v in list_videos(dest) if v.id in wanted] if dest.is_dir() else []
            gone = sorted(wanted - {v.id for v in self.videos})
            if gone:
                raise DataError(f"{dest}: {len(gone)} of this flow's videos are gone ({', '.join(gone[:3])}); "
                                f"remove {self.state.path} to start the flow again")
        return self.videos

    def reserve(self, videos: list) -> float:
        kept = self.state.planned("sampling_reserve_s")
        if kept is None:
            kept = self.state.plan("sampling_reserve_s", _sampling_reserve(self.s, self.ws, self.clock,
                                                                            self._tok_config(videos)))
        return float(kept)

    def _minutes(self, key: str, plan: Callable[[], float]) -> tuple[float, bool]:
        """(minutes of a training stage, whether an earlier session started it): decided once per flow."""
        kept = self.state.planned(key)
        return (float(kept), True) if kept is not None else (self.state.plan(key, plan()), False)

    def tokenizer(self, videos: list, reserve: float) -> dict[str, Any]:
        minutes, again = self._minutes(
            "tokenizer_minutes", lambda: _tokenizer_minutes(self.s, self.clock, reserve, self.prog))
        self.prog.log(f"tokenizer: run {self.tok_name}, {minutes:.1f} min{' (continued)' if again else ''}")
        sm = _train_tokenizer(self.s, self.ws, videos, self.tok_name, minutes, self._tok_settings(), again, self.prog)
        return {"run": str(self.ws.run_dir(self.tok_name)), "name": self.tok_name, "steps": sm.get("step"),
                "val_psnr": sm.get("val_psnr"), "minutes": minutes}

    def dynamics(self, lat_dir: Path, reserve: float, latent_actions: bool) -> dict[str, Any]:
        c = self.clock
        minutes, again = self._minutes(
            "dynamics_minutes", lambda: max(c.left() - reserve - 0.02 * c.budget, MIN_TRAIN_SECONDS) / 60)
        self.prog.log(f"dynamics: run {self.dyn_name}, {minutes:.1f} min"
                      f"{', latent actions' if latent_actions else ''}{' (continued)' if again else ''}")
        dyn = _train_dynamics(self.s, self.ws, lat_dir, self.dyn_name, minutes, again, latent_actions, self.prog)
        return {"run": str(dyn.run_dir), "name": self.dyn_name, "steps": dyn.step, "minutes": minutes,
                "val": dyn.val, "latent_actions": latent_actions}

    def evaluate(self, lat_dir: Path) -> dict[str, Any]:
        self.world, report = _evaluate(self.s, self.ws, self.dyn_name, self.tok_name, lat_dir, self.prog)
        self.metrics = report.metrics
        return {"dir": str(report.out_dir)}

    def rollout(self, videos: list, metrics: dict[str, Any]) -> dict[str, Any]:
        if self.world is None:  # the evaluation ran in an earlier session
            from .inference.world import load_world_model

            self.world = load_world_model(self.ws.run_dir(self.dyn_name), self.ws, tokenizer=self.ws.run_dir(self.tok_name))
        ro = _rollout(self.s, videos, self.world, metrics, self.prog)
        return {"rollout": ro.to_dict() if ro is not None else None}

    def eval_metrics(self, ev: dict[str, Any]) -> dict[str, Any]:
        if self.metrics is None:
            try:
                self.metrics = json.loads((Path(ev["dir"]) / "metrics.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise DataError(f"{ev['dir']}: cannot read the evaluation's metrics.json ({e}); remove "
                                f"{self.state.path} to start the flow again") from None
        return self.metrics

    def run(self) -> tuple[dict[str, Any], Path]:
        st, prog = self.stages, self.prog
        if self.state.resumed:
            done = [n for n in st.names if self.state.done(n) is not None]
            prog.log(f"continuing the flow started {self.state.data['started']} ({self.clock.elapsed() / 60:.1f} of "
                     f"{self.s.minutes:g} minutes spent; done: {', '.join(done) or 'nothing yet'})")
        prog.start("demo", total=len(st.names))
        first = st.run(0, self.first_stage)
        videos = self.records(first)
        reserve = self.reserve(videos)
        latent_actions = self.source is not None and not first["actions"]
        tok = st.run(1, lambda: self.tokenizer(videos, reserve))
        lat = st.run(2, lambda: {"latents": str(_tokenize(Path(tok["run"]), videos, self.ws.latents,
                                                          self.s.val_fraction, prog, self.s.precision))})
        lat_dir = Path(lat["latents"])
        dyn = st.run(3, lambda: self.dynamics(lat_dir, reserve, latent_actions))
        ev = st.run(4, lambda: self.evaluate(lat_dir))
        metrics = self.eval_metrics(ev)
        ro = st.run(5, lambda: self.rollout(videos, metrics))["rollout"]
        prog.finish("demo")
        return self.summary(first, tok, lat_dir, dyn, ev, metrics, ro), Path(dyn["run"])

    def summary(self, first: dict[str, Any], tok: dict[str, Any], lat_dir: Path, dyn: dict[str, Any],
                ev: dict[str, Any], m: dict[str, Any], ro: dict[str, Any] | None) -> dict[str, Any]:
        s, clock = self.s, self.clock
        evs = _eval_summary(s, m)
        names = self.stages.names
        summary: dict[str, Any] = {
            "started": self.state.data["started"], "settings": s.model_dump(),
            "finished": datetime.now().isoformat(timespec="seconds"),
            "minutes_budget": s.minutes,
            "minutes_used": clock.elapsed() / 60,
            "sessions": self.state.data["sessions"],
            "stage_seconds": self.stages.seconds(),
            "workspace": str(self.ws.root),
            "source": self.source,
            "videos": len(first["videos"]),
            "video_store": first["dest"],
            "held_out_videos": first["held_out"],
            "latent_actions": bool(dyn.get("latent_actions")),
            "tokenizer": {k: tok[k] for k in ("run", "name", "steps", "val_psnr", "minutes")},
            "latents": str(lat_dir),
            "dynamics": {k: dyn[k] for k in ("run", "name", "steps", "minutes", "val")},
            "sampling_reserve_s": self.state.planned("sampling_reserve_s"),
            "eval": {"dir": ev["dir"], "clips": m["clip_count"], **evs,
                     "plot": m["files"]["plot"], "videos": m["files"]["videos"]},
            "rollout": ro,
            "flow": str(self.state.path),
        }
        summary["stage_outputs"] = dict(zip(names, (first["dest"], tok["name"], str(lat_dir), dyn["name"], ev["dir"],
                                                   (ro or {}).get("out")), strict=True))
        lo, hi = min(s.steps), max(s.steps)
        gain = summary["eval"]["gain_over_copy_last_db"][f"{lo} steps"]
        summary["acceptance"] = {
            f"{lo}_steps_beats_copy_last_by_1db": bool(gain >= 1.0),
            f"{lo}_within_0.5db_of_{hi}": bool(summary["eval"]["gap_db"] >= -0.5),
            "within_budget": bool(clock.elapsed() <= clock.budget),
        }
        return summary


def run_demo(
    settings: DemoSettings | None = None,
    workspace: Workspace | None = None,
    progress: Progress | None = None,
    videos: str | None = None,
    fetch: FetchSettings | None = None,
) -> DemoResult:
    """Run every stage inside ``settings.minutes``; returns the summary (also written as JSON).

    ``videos``: a folder, a video file or a URL of one's own videos instead of the built-in game (``fetch``:
    the import's settings, e.g. ``max_videos``). The same call after an interruption continues the flow.
    """
    from .demo_videos import check_source

    s = settings or DemoSettings()
    ws = workspace or Workspace.resolve()
    prog = ensure(progress)
    _check_settings(s, own_videos=videos is not None)
    if videos is not None:
        videos = check_source(videos)
    state = FlowState.open(ws.root, videos, s.model_dump(mode="json"))
    flow = _Flow(s, ws, prog, state, videos, fetch)
    try:
        summary, dyn_dir = flow.run()
    except BaseException:  # Ctrl-C (or a failure): keep what was done and decided, and the time spent
        with contextlib.suppress(OSError):  # the error to show is the flow's
            state.save(flow.clock.elapsed())
        raise
    path = dyn_dir / "demo-summary.json"
    write_json_atomic(path, summary)
    state.data["summary"] = str(path)
    state.save(flow.clock.elapsed(), finished=True)
    return DemoResult(summary=json.loads(json.dumps(summary, default=str)), path=path, stage_seconds=flow.stages.seconds())
