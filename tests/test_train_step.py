"""The benchmarks time ``ahri train``'s own training step: the same step class and objective, and from the same
state and batches the same weights (EMA warm-up, gradient accumulation and latent actions included)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from ahri_core.config.settings import DataSettings, DiffusionSettings, LatentActionSettings, TrainSettings
from ahri_core.data.windows import LatentVideo, make_latent_set
from ahri_core.train import loop
from ahri_core.train.common import seed_everything, with_preset_data, with_preset_defaults
from ahri_core.train.dynamics import model_config_for, train_dynamics
from ahri_core.train.objectives.dynamics import DynamicsObjective
from ahri_core.train.step import TrainStep

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_dynamics_train  # noqa: E402
import bench_runtime  # noqa: E402
import gpu_check  # noqa: E402
import train_steps  # noqa: E402

CPU = torch.device("cpu")


def _clip(seed: int, frames: int = 24, tokens: int = 4, channels: int = 4) -> LatentVideo:
    g = torch.Generator().manual_seed(seed)
    phase = torch.rand(tokens, channels, generator=g) * 6.28
    t = torch.arange(frames, dtype=torch.float32)[:, None, None]
    return LatentVideo(f"c{seed}", (0.8 * torch.sin(0.25 * t + phase)).half(), torch.randint(0, 3, (frames,), generator=g))


def test_the_benchmarks_build_the_loops_step_and_objective():
    assert loop.TrainStep is TrainStep
    model = gpu_check.make_model("tiny", 4, 4, CPU).train()
    trainer = gpu_check.Trainer(model, "tiny", CPU, "fp32")
    assert type(trainer.bench.train_step) is TrainStep and type(trainer.bench.obj) is DynamicsObjective
    assert trainer.bench.obj.model is model
    loss, boot = trainer.step(gpu_check.latents(2, 4, 4, 4, CPU))
    assert math.isfinite(loss) and 0.0 <= boot <= 1.0 and trainer.bench.step == 1
    row = bench_dynamics_train.bench_config("tiny", 2, 4, 4, 4, True, 1, 0, "fp32")
    assert row["step_s"] > 0
    step, frames = bench_runtime.dynamics_step(batch=1, frames=4, tokens=4, channels=4)
    step("fp32")
    assert frames == 4


def test_the_tokenizer_benchmark_runs_the_tokenizer_stages_objective_and_step():
    """bench_runtime's tokenizer step is ``ahri train --stage tokenizer``'s: its objective draws the MAE mask and
    normalises the loss by its running RMS, and the loop's step clips, checks and steps AdamW."""
    from ahri_core.models.tokenizer import tokenizer_config
    from ahri_core.train.objectives.tokenizer import TokenizerObjective

    cfg = tokenizer_config("tiny")
    bench = train_steps.TokenizerBenchStep(cfg, TrainSettings(batch_size=2, lr=1e-3, ema=0.0), "fp32")
    assert type(bench.train_step) is TrainStep and type(bench.obj) is TokenizerObjective
    before = [p.detach().clone() for p in bench.model.parameters()]
    mask_state = bench.obj.mask_gen.get_state().clone()
    res = bench(torch.rand(2, 3, *cfg.size))
    assert res.ok and bench.step == 1 and int(bench.obj.rms["mse"].count) == 1
    assert not torch.equal(bench.obj.mask_gen.get_state(), mask_state) or cfg.mask_max == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, bench.model.parameters(), strict=True))
    step, frames = bench_runtime.tokenizer_step(batch=2)
    step("fp32")
    assert frames == 2


def test_a_benchmark_step_gives_the_weights_of_the_loops_step(tmp_path):
    """``ahri train`` for three steps (accumulating two batches each, EMA on, latent actions with their forward
    head) and the benchmarks' step on the same objective from the same seed end with identical weights."""
    data = make_latent_set([_clip(0), _clip(1)], [], action_count=3)
    train = TrainSettings(preset="tiny", batch_size=2, lr=3e-3, warmup_steps=0, min_lr_ratio=1.0, ema=0.9,
                          grad_accum=2, max_steps=3, log_every=1, val_every=1000, checkpoint_every=1000, seed=0,
                          device="cpu", precision="fp32")
    dset, diff = DataSettings(seq_len=8, stride=4), DiffusionSettings()
    lam = LatentActionSettings(enabled=True, codes=8, forward_weight=0.5)
    r = train_dynamics(data, tmp_path / "run", train, dset, diff, latent_actions=lam)
    assert r.step == 3

    train, dset = with_preset_defaults(train, "dynamics"), with_preset_data(dset, "tiny")
    seed_everything(train.seed)
    cfg = model_config_for(data, train, dset, diff, lam)
    obj = DynamicsObjective(cfg, data, train, dset, diff, {}, CPU, lam)
    bench = train_steps.BenchStep(obj, train, "fp32")
    assert bench.train_step.accum == 2 and bench.train_step.ema is not None
    for _ in range(3):
        res = bench()
        assert res.ok and len(res.outs) == 2 and "forward_loss" in res.outs[0].logs
    raw = load_file(r.run_dir / "model.safetensors")
    ema = load_file(r.run_dir / "ema.safetensors")
    assert set(raw) == set(obj.model.state_dict())
    for k, v in obj.model.state_dict().items():
        assert torch.equal(v, raw[k]), k
    for k, v in bench.train_step.ema.averaged(obj.model).items():
        assert torch.equal(v, ema[k]), k
