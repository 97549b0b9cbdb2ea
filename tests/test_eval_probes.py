"""The context probes of ahri eval: context sensitivity and teacher-forced next-frame latent MSE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sampling_fakes import ContextMeanModel, CopyLastModel, GaussianDenoiser, make_world

from ahri_cli.main import main
from ahri_core.config.settings import SamplingSettings
from ahri_core.eval.evaluate import evaluate
from ahri_core.eval.probes import (
    action_rollout_probe,
    batch_generator,
    context_probe,
    mean_latent,
    memorisation_probe,
    other_clip,
    sensitivity,
    teacher_forced_next,
)
from ahri_core.inference.sampler import Sampler, traits_of
from ahri_core.inference.world import load_world_model


def _clips(n=6, frames=7, tokens=3, ch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    # clips differ a lot from one another, frames of a clip drift slowly
    base = torch.randn(n, 1, tokens, ch, generator=g)
    drift = 0.1 * torch.randn(n, frames, tokens, ch, generator=g).cumsum(1)
    return base + drift


def _sampler(model, steps=4, tau_ctx=0.0):
    return Sampler(model, traits_of(model), steps=steps, tau_ctx=tau_ctx)


def test_donor_is_always_another_clip():
    assert other_clip(2) == [1, 0]
    d = other_clip(5)
    assert all(d[i] != i for i in range(5)) and sorted(d) == list(range(5))
    with pytest.raises(ValueError):
        other_clip(1)


def test_a_model_that_ignores_its_context_has_sensitivity_zero():
    ctx = _clips()[:, :5]
    s = sensitivity(context_probe(_sampler(GaussianDenoiser(mu=0.2, sigma=0.5, k_max=4)), ctx, seed=3, batch_size=4))
    assert s["context_change_mse"] > 0.5
    assert s["sensitivity"] == pytest.approx(0.0, abs=1e-6)  # same noise, context unused: the same prediction


def test_a_model_that_copies_the_last_frame_has_sensitivity_one():
    ctx = _clips()[:, :5]
    pr = context_probe(_sampler(CopyLastModel(k_max=4)), ctx, seed=1, batch_size=4)
    torch.testing.assert_close(pr["pred"], ctx[:, -1])
    torch.testing.assert_close(pr["pred_swap"], ctx[other_clip(6), -1])
    s = sensitivity(pr)
    assert s["sensitivity"] == pytest.approx(1.0, rel=1e-5)
    assert s["history_share"] == pytest.approx(0.0, abs=1e-9)  # the frames before the last do not matter


def test_history_share_sees_a_model_that_uses_earlier_frames():
    ctx = _clips()[:, :5]
    s = sensitivity(context_probe(_sampler(ContextMeanModel(k_max=4)), ctx, seed=0, batch_size=4))
    assert 0.3 < s["history_share"] <= 1.0  # four of the five averaged frames come from the other clip
    assert 0.3 < s["sensitivity"] < 1.5


def test_context_probe_uses_the_same_noise_for_every_variant():
    """With context corruption on, a context-blind model still gets identical predictions (same seed)."""
    ctx = _clips()[:, :5]
    pr = context_probe(_sampler(GaussianDenoiser(k_max=4), tau_ctx=0.1), ctx, seed=7, batch_size=4)
    torch.testing.assert_close(pr["pred"], pr["pred_swap"])
    torch.testing.assert_close(pr["pred"], pr["pred_history"])


class ActionValueModel(CopyLastModel):
    """Predicts every latent value of a frame as its action / 10: a model that follows its actions and nothing else."""

    def forward(self, z, tau, step, actions=None, isolated=None):
        return actions[..., None, None].to(z.dtype).expand_as(z) / 10

    def step(self, z, tau, step, actions, cache, commit):
        return actions[..., None, None].to(z.dtype).expand_as(z) / 10


def test_action_rollout_probe_tells_a_model_that_follows_its_actions_from_one_that_ignores_them():
    n, C, H = 4, 3, 2
    z = torch.rand(n, C + H, 3, 4, generator=torch.Generator().manual_seed(0))
    actions = torch.arange(1, n + 1)[:, None].repeat(1, C + H)  # clip i: action i + 1 on every frame

    def decode(lat):  # 3 tokens x 4 channels as a 3 x 1 x 4 picture
        return lat.reshape(*lat.shape[:2], 3, 1, 4)

    target = decode(actions[:, C:, None, None].float().expand(n, H, 3, 4) / 10)
    for model, follows in ((ActionValueModel(k_max=4), True), (CopyLastModel(k_max=4), False)):
        sampler = _sampler(model)
        own = decode(sampler.rollout(z[:, :C], H, actions=actions, generator=batch_generator(0, 0)).latents)
        ro = action_rollout_probe(sampler, z, actions, C, H, 0, n, decode, target, own)
        assert ro["changed_share"] == 1.0 and ro["steps"] == 4 and len(ro["psnr_own"]) == H
        if follows:  # its own actions give the truth exactly, another clip's do not
            assert ro["psnr_own"] == [100.0] * H and max(ro["psnr_other"]) < 30
            assert ro["psnr_own_vs_other"] == pytest.approx(ro["psnr_other"])
            assert ro["gain_db_h1_16"] > 70
        else:  # the same rollout whatever the actions
            assert ro["psnr_own_vs_other"] == [100.0] * H and ro["gain_db_h1_16"] == 0.0


def test_teacher_forced_next_against_copy_last_and_the_mean():
    x = _clips(n=4, frames=8)
    copy = CopyLastModel(k_max=4)
    r = teacher_forced_next(copy, traits_of(copy), x, context=5, tau_ctx=0.0, mean=x.mean(dim=(0, 1)))
    assert r["model"].shape == (4, 3) == r["copy_last"].shape == r["mean_latent"].shape
    np.testing.assert_allclose(r["model"], r["copy_last"], rtol=1e-6)  # the copy model is the baseline
    want = (x[:, 4:7] - x[:, 5:8]).pow(2).mean(dim=(-2, -1)).numpy()
    np.testing.assert_allclose(r["copy_last"], want, rtol=1e-6)
    # a model that predicts mu at tau = 1 scores exactly the MSE of the mean guess mu
    gd = GaussianDenoiser(mu=0.3, sigma=0.5, k_max=4)
    r = teacher_forced_next(gd, traits_of(gd), x, context=5, tau_ctx=0.1, mean=torch.full((3, 4), 0.3))
    np.testing.assert_allclose(r["model"], r["mean_latent"], rtol=1e-5)


def test_teacher_forced_respects_the_window():
    seen = []

    class Spy(CopyLastModel):
        def forward(self, z, tau, step, actions=None, isolated=None):
            seen.append((z.shape[1], float(tau[0, -1]), float(tau[0, 0]), float(step[0, -1])))
            return super().forward(z, tau, step)

    m = Spy(k_max=8, max_frames=4, shortcut=True)
    teacher_forced_next(m, traits_of(m), _clips(n=2, frames=9), context=6, tau_ctx=0.1)
    assert [s[0] for s in seen] == [4, 4, 4]  # 3 context frames + the new one
    assert all(s[1] == 1.0 and abs(s[2] - 0.1) < 1e-7 and s[3] == 1.0 for s in seen)


def test_mean_latent_over_videos():
    from ahri_core.data.windows import LatentVideo

    vids = [LatentVideo("a", torch.zeros(10, 2, 3, dtype=torch.float16)),
            LatentVideo("b", torch.ones(30, 2, 3, dtype=torch.float16))]
    torch.testing.assert_close(mean_latent(vids), torch.full((2, 3), 0.75))


class Memoriser(CopyLastModel):
    """Copies the last frame, except after a frame of its training videos, whose successor it knows: there it
    predicts the midpoint of the last frame and the true next one (a quarter of copy-last's error)."""

    def __init__(self, videos, **cfg) -> None:
        super().__init__(**cfg)
        self.bank = [(v.latents[i].float(), v.latents[i + 1].float()) for v in videos for i in range(v.frames - 1)]

    def forward(self, z, tau, step, actions=None, isolated=None):
        out = super().forward(z, tau, step).clone()
        for b in range(z.shape[0]):
            for frame, nxt in self.bank:
                if torch.equal(z[b, -2], frame):
                    out[b, -1] = 0.5 * (frame + nxt)
                    break
        return out


def _videos(prefix, n, frames, seed):
    from ahri_core.data.windows import LatentVideo

    x = _clips(n=n, frames=frames, seed=seed).to(torch.float16)
    return [LatentVideo(f"{prefix}{i}", x[i]) for i in range(n)]


def _probe_world(model):
    from types import SimpleNamespace

    return SimpleNamespace(dynamics=model, traits=traits_of(model), device="cpu", actions_usable=lambda: False)


def test_memorisation_probe_sees_a_model_that_knows_its_training_clips():
    train, val = _videos("t", 3, 12, seed=1), _videos("v", 2, 12, seed=2)
    s = SamplingSettings(steps=[1], context=4, horizon=3, clips=4, seed=0, batch_size=2, tau_ctx=0.0)
    for model, want in ((CopyLastModel(k_max=4), 1.0), (Memoriser(train, k_max=4), 4.0)):
        world = _probe_world(model)
        val_x = torch.stack([v.latents[:7].float() for v in val])
        held = teacher_forced_next(model, world.traits, val_x, 4, 0.0)
        m = memorisation_probe(world, s, train, held, "fp32")
        assert m["train_clips"] == 3  # one window of 7 frames fits in each 12-frame training video
        assert m["held_out"]["relative"] == pytest.approx(1.0)  # new video: it can only copy
        # on its training clips the memoriser has a quarter of copy-last's error, hence a gap of 4
        assert m["train"]["relative"] == pytest.approx(1.0 / want, rel=1e-5)
        assert m["gap"] == pytest.approx(want, rel=1e-5)


def test_memorisation_hint_only_when_the_gap_is_large():
    from ahri_cli.eval_cmd import memorisation_hint

    assert memorisation_hint({"probes": {"memorisation": {"gap": 1.2}}}) is None
    assert memorisation_hint({"probes": {}}) is None
    assert "3.0x" in memorisation_hint({"probes": {"memorisation": {"gap": 3.0}}})
    # how much more video helps, from the measured data curve: more at a larger gap
    assert "Twice the video" in memorisation_hint({"probes": {"memorisation": {"gap": 2.5}}})
    assert "1.8x the footage" in memorisation_hint({"probes": {"memorisation": {"gap": 1.7}}})


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("probews"))


def test_eval_reports_probes_and_the_train_split(world, tmp_path, capsys):
    ws, lat_dir, run = world
    wm = load_world_model(run, ws)
    s = SamplingSettings(steps=[4], context=3, horizon=2, clips=3, seed=0, batch_size=2)
    rep = evaluate(wm, settings=s, out_dir=tmp_path / "v", workspace=ws, samples=0, precision="fp32")
    p = rep.metrics["probes"]
    c = p["context"]
    assert c["steps"] == 4 and c["sensitivity"] >= 0 and len(c["per_clip"]["context_change_mse"]) == 3
    assert c["psnr_drop_db"] == pytest.approx(c["psnr_h1"] - c["psnr_h1_swapped"], abs=1e-4)
    # the probe's h = 1 prediction with the true context is the rollout's first frame (same seed, same noise)
    assert c["psnr_h1"] == pytest.approx(rep.metrics["steps"]["4"]["psnr"]["mean"][0], abs=1e-3)
    tf = p["teacher_forced"]
    assert set(tf["all_h"]) == {"model", "copy_last", "mean_latent"} and tf["mean_latent_from"].startswith("train")
    assert len(tf["per_h"]["model"]["mean"]) == 2
    act = p["actions"]  # the built-in game's clips carry actions: the same prediction with another clip's
    assert act["mse_own_actions"] == pytest.approx(tf["all_h"]["model"])
    assert act["mse_other_clip_actions"] > 0 and act["mse_other_clip_actions"] != act["mse_own_actions"]
    assert act["use"] == pytest.approx(1 - act["mse_own_actions"] / act["mse_other_clip_actions"])
    # over the rollout: the own-action curve is the rollout's own (same noise), the other differs where actions do
    ro = act["rollout"]
    np.testing.assert_allclose(ro["psnr_own"], rep.metrics["steps"]["4"]["psnr"]["mean"], atol=1e-3)
    assert len(ro["psnr_other"]) == len(ro["psnr_own_vs_other"]) == 2 and ro["steps"] == 4
    assert ro["gain_db_h1_16"] == pytest.approx(np.mean(ro["psnr_own"]) - np.mean(ro["psnr_other"]), abs=1e-6)
    assert 0 < ro["changed_share"] <= 1
    mem = p["memorisation"]  # held-out against windows of the training videos
    assert mem["train_clips"] >= 1 and mem["held_out"]["model"] == pytest.approx(tf["all_h"]["model"])
    assert mem["held_out"]["copy_last"] == pytest.approx(tf["all_h"]["copy_last"])
    assert mem["gap"] == pytest.approx(mem["held_out"]["relative"] / mem["train"]["relative"])
    index = json.loads((lat_dir / "index.json").read_text())
    train_ids = {v["id"] for v in index["videos"] if v["split"] == "train"}
    rep = evaluate(wm, settings=s, out_dir=tmp_path / "t", workspace=ws, samples=0, precision="fp32",
                   split="train")
    assert rep.metrics["split"] == "train" and "memorisation" not in rep.metrics["probes"]  # nothing to compare
    rep = evaluate(wm, settings=s, out_dir=tmp_path / "t", workspace=ws, samples=0, precision="fp32",
                   split="train", probes=False)
    assert rep.metrics["split"] == "train" and rep.metrics["probes"] is None
    assert {c["video"] for c in rep.metrics["clips"]} <= train_ids
    # another latent set (here a copy): its training split is not what the run trained on, so no gap is claimed
    import shutil

    other = shutil.copytree(lat_dir, tmp_path / "other-set")
    rep = evaluate(wm, other, s, out_dir=tmp_path / "o", workspace=ws, samples=0, precision="fp32")
    assert "other-set" in rep.metrics["probes"]["memorisation"]["skipped"]
    rc = main(["-w", str(ws.root), "eval", run.name, "--steps", "4", "--context", "3", "--horizon", "2",
               "--clips", "2", "--samples", "0", "--out", str(tmp_path / "cli")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "context sensitivity" in text and "teacher-forced" in text and "memorising" in text
    assert max(len(line) for line in text.splitlines()) <= 100
