"""ahri eval: pixel metrics, clip choice, baselines on the same frames, the report files and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sampling_fakes import held_out, make_world

from ahri_cli.main import main
from ahri_core.config.settings import SamplingSettings
from ahri_core.eval.clips import select_clips
from ahri_core.eval.evaluate import evaluate
from ahri_core.eval.metrics import (
    STATIC_TOLERANCE,
    high_frequency_energy,
    image_metrics,
    masked_squared_error,
    mse_per_image,
    pooled_psnr,
    psnr_average_over,
    psnr_over_clips,
    psnr_per_image,
    sharpness_ratio,
    ssim_per_image,
    static_mask,
    summarize,
    t95,
)
from ahri_core.inference.world import load_world_model
from ahri_core.video import probe, read_frames
from ahri_core.visual import to_float


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("evalws"))


def test_psnr_of_a_known_error():
    a = torch.zeros(2, 3, 8, 8)
    b = torch.full((2, 3, 8, 8), 0.1)
    torch.testing.assert_close(psnr_per_image(a, b), torch.full((2,), 20.0))
    assert float(psnr_per_image(b, b)[0]) == 100.0  # identical images: capped, not inf
    # the prediction is clipped to [0, 1] before it is scored
    torch.testing.assert_close(psnr_per_image(b - 5.0, b), psnr_per_image(torch.zeros_like(b), b))


def test_ssim_is_one_for_identical_and_drops_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g)
    assert torch.allclose(ssim_per_image(x, x), torch.ones(3), atol=1e-5)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    s = ssim_per_image(noisy, x)
    assert torch.all(s < 0.9) and torch.all(s > 0)
    m = image_metrics(noisy, x)
    assert set(m) == {"psnr", "ssim", "mse"} and m["mse"].shape == (3,)


def test_summary_interval():
    v = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    s = summarize(v)
    assert s["mean"] == [3.0, 10.0]
    assert math.isclose(s["ci95"][0], t95(3) * 2.0 / math.sqrt(3))
    assert s["ci95"][1] == 0.0
    assert math.isnan(summarize(v[:1])["ci95"][0])


def test_psnr_over_clips_is_the_psnr_of_the_mean_error_and_an_exact_frame_does_not_decide_it():
    mse = np.array([[0.01, 0.0005], [0.01, 0.0015], [0.0, 0.001], [0.01, 0.001]])  # clip 3 copies frame 1 exactly
    p = psnr_over_clips(mse)
    assert p["mean"][0] == pytest.approx(-10 * math.log10(0.0075))  # 21.25 dB
    assert p["mean"][1] == pytest.approx(30.0)
    # the mean of per-clip PSNRs would put the exact frame in at 100 dB: 40 dB, ahead of any honest predictor
    per_clip = np.where(mse > 0, -10 * np.log10(np.maximum(mse, 1e-30)), 100.0)
    assert per_clip[:, 0].mean() == pytest.approx(40.0) and p["mean"][0] < 22
    # interval by the delta method: 10 / ln 10 times the relative half-width of the mean error
    half = t95(4) * mse[:, 1].std(ddof=1) / 2 / mse[:, 1].mean()
    assert p["ci95"][1] == pytest.approx(10 / math.log(10) * half)
    assert psnr_average_over(mse, 1, 2) == pytest.approx((p["mean"][0] + p["mean"][1]) / 2)
    assert psnr_average_over(mse, 2, 9) == pytest.approx(30.0)  # clipped to the horizon
    assert psnr_over_clips(np.zeros((3, 1)))["mean"] == [100.0]  # every frame exact: the cap
    assert math.isnan(psnr_over_clips(mse[:1])["ci95"][0])


def test_static_region_error_counts_only_unchanged_pixels():
    last = torch.zeros(2, 3, 4, 4)
    target = last.clone()
    target[0, :, 0, 0] = 1.0  # one pixel changed in the first frame
    target[1, 1, 2, 3] = STATIC_TOLERANCE / 2  # within the tolerance: still unchanged
    mask = static_mask(last, target)
    assert mask.shape == (2, 4, 4) and mask[0].sum() == 15 and mask[1].all()
    pred = torch.full_like(target, 0.1)
    pred[0, :, 0, 0] = 0.9  # a large error on the changed pixel is not counted
    se, n = masked_squared_error(pred, target, mask)
    assert n.tolist() == [45, 48]
    assert se[0].item() == pytest.approx(45 * 0.01, rel=1e-5)
    assert se[1].item() == pytest.approx(47 * 0.01 + (0.1 - STATIC_TOLERANCE / 2) ** 2, rel=1e-5)
    # pooled over clips: every scored value weighs the same; nothing scored gives None
    got = pooled_psnr(np.array([[0.5, 0.0], [1.5, 0.0]]), np.array([[100, 0], [100, 0]]))
    assert got[0] == pytest.approx(-10 * math.log10(2.0 / 200)) and got[1] is None


def test_high_frequency_energy_falls_with_blur_and_is_zero_on_flat_images():
    flat = torch.full((1, 3, 8, 8), 0.5)
    assert high_frequency_energy(flat).item() == 0.0
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    sharp = checker.float().expand(1, 3, 8, 8)
    assert high_frequency_energy(sharp).item() == pytest.approx(16.0)  # |laplacian| = 4 at every inner pixel
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1, count_include_pad=False)
    assert high_frequency_energy(blurred).item() < 0.2 * high_frequency_energy(sharp).item()
    e = np.array([[1.0, 2.0], [3.0, 0.0]])
    ref = np.array([[2.0, 1.0], [2.0, 0.0]])
    assert sharpness_ratio(e, ref) == [1.0, 2.0]
    assert sharpness_ratio(e, np.zeros_like(ref)) == [None, None]


def test_clips_are_inside_videos_and_do_not_overlap():
    lengths = {"a": 100, "b": 40, "c": 10}
    clips = select_clips(lengths, context=8, horizon=8, clips=50, seed=3)
    assert {c.video_id for c in clips} == {"a", "b"}  # c is too short
    assert len(clips) == 100 // 16 + 40 // 16
    for vid in ("a", "b"):
        spans = sorted((c.start, c.start + 16) for c in clips if c.video_id == vid)
        assert all(e <= lengths[vid] for _, e in spans)
        assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1))
    # round robin: the first two clips come from different videos
    assert len({c.video_id for c in select_clips(lengths, 8, 8, 2, seed=3)}) == 2
    assert select_clips(lengths, 8, 8, 5, seed=1) == select_clips(lengths, 8, 8, 5, seed=1)


def test_eval_on_held_out_video_with_baselines_on_the_same_frames(world, tmp_path):
    ws, lat_dir, run = world
    wm = load_world_model(run, ws)
    s = SamplingSettings(steps=[2, 8], context=4, horizon=5, clips=3, seed=1, batch_size=2)
    rep = evaluate(wm, settings=s, out_dir=tmp_path / "ev", workspace=ws, samples=1, precision="fp32")
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m == json.loads(json.dumps(rep.metrics))
    assert m["truth"] == "video frames" and m["split"] == "val"
    val = held_out(lat_dir)
    assert {c["video"] for c in m["clips"]} <= set(val) and len(val) >= 1  # held-out videos only

    # Recompute both baselines independently from the real frames of the same clips.
    from safetensors.torch import load_file

    copy, ceil, st_copy, st_ceil, hf_ceil, hf_real = [], [], [], [], [], []
    for c in m["clips"]:
        vid, st = c["video"], c["start"]
        real = to_float(read_frames(ws.videos / "game" / f"{vid}.mp4", fps=20, size=32))
        true_lat = load_file(str(lat_dir / f"{vid}.safetensors"))["latents"].float()
        target = real[st + 4 : st + 9]
        copy.append(mse_per_image(real[st + 3].expand_as(target), target))
        dec = wm.decode(true_lat[st + 4 : st + 9])
        ceil.append(mse_per_image(dec, target))
        same = ((real[st + 3] - target).abs().amax(dim=1) <= STATIC_TOLERANCE).float()  # (5, h, w)
        st_copy.append([((real[st + 3] - target[i]).pow(2).sum(0) * same[i]).sum() / (3 * same[i].sum()) for i in range(5)])
        st_ceil.append((((dec.clamp(0, 1) - target).pow(2).sum(1) * same).sum((1, 2)), 3 * same.sum((1, 2))))
        lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).expand(3, 1, 3, 3)
        hf_ceil.append(torch.nn.functional.conv2d(dec.clamp(0, 1), lap, groups=3).pow(2).mean((1, 2, 3)))
        hf_real.append(torch.nn.functional.conv2d(target, lap, groups=3).pow(2).mean((1, 2, 3)))
    copy_psnr = -10 * torch.log10(torch.stack(copy).double().mean(0))  # the PSNR of the mean MSE over clips
    ceil_psnr = -10 * torch.log10(torch.stack(ceil).double().mean(0))
    np.testing.assert_allclose(m["baselines"]["copy_last"]["psnr"]["mean"], copy_psnr.numpy(), rtol=1e-5)
    np.testing.assert_allclose(m["baselines"]["tokenizer_ceiling"]["psnr"]["mean"], ceil_psnr.numpy(), rtol=1e-4)
    assert m["summary"]["psnr_h1_5"]["copy_last"] == pytest.approx(float(copy_psnr.mean()), rel=1e-5)
    assert len(m["baselines"]["copy_last"]["psnr_clip_mean"]["mean"]) == 5  # the older statistic, kept
    # the copy-last baseline is measured on real frames: it is not the ceiling's decoded frames
    assert m["baselines"]["copy_last"]["psnr"]["mean"] != m["baselines"]["tokenizer_ceiling"]["psnr"]["mean"]
    assert (tmp_path / "ev" / "psnr.png").stat().st_size > 1000
    info = probe(tmp_path / "ev" / "sample-0.mp4")
    assert info.frames == 9 and info.fps == 20
    assert info.width == 5 * 32 * 3  # truth | (prediction, error) per step count, scale 3
    assert "gain_over_copy_last_db_h1_5" in m["summary"]
    # What did not move: copy-last is right there up to the tolerance; the ceiling is recomputed by hand.
    sr = m["static_region"]
    assert set(sr["psnr"]) == {"copy_last", "tokenizer_ceiling", "steps_2", "steps_8"} and len(sr["fraction"]) == 5
    assert all(0 < f <= 1 for f in sr["fraction"])  # the built-in game's background stands still
    floor = -10 * math.log10(STATIC_TOLERANCE**2)
    assert all(v >= floor for v in sr["psnr"]["copy_last"])
    se = torch.stack([s for s, _ in st_ceil]).double().sum(0)
    cnt = torch.stack([n for _, n in st_ceil]).double().sum(0)
    np.testing.assert_allclose(sr["psnr"]["tokenizer_ceiling"], (-10 * torch.log10(se / cnt)).numpy(), rtol=1e-4)
    assert sr["gap_to_ceiling_db_h1"]["steps_2"] == pytest.approx(sr["psnr_h1"]["tokenizer_ceiling"] - sr["psnr_h1"]["steps_2"])
    sh = m["sharpness"]
    ref = torch.stack(hf_ceil).double().mean(0)
    real_e = torch.stack(hf_real).double().mean(0)
    assert sh["ratio"]["tokenizer_ceiling"] == [1.0 if r > 0 else None for r in ref.tolist()]
    expect = [None if r <= 0 else float(e / r) for e, r in zip(real_e, ref, strict=True)]
    np.testing.assert_allclose([np.nan if x is None else x for x in sh["ratio"]["truth"]],
                               [np.nan if x is None else x for x in expect], rtol=1e-4)
    assert sh["ratio_h1"]["steps_2"] == sh["ratio"]["steps_2"][0]


def test_eval_cli_writes_report_and_refuses_bad_steps(world, tmp_path, capsys):
    ws, _, run = world
    out = tmp_path / "cli"
    rc = main(["-w", str(ws.root), "eval", run.name, "--steps", "4", "--context", "3", "--horizon", "2",
               "--clips", "2", "--samples", "0", "--out", str(out)])
    assert rc == 0
    assert (out / "metrics.json").is_file()
    assert "copy last" in capsys.readouterr().out
    rc = main(["-w", str(ws.root), "eval", run.name, "--steps", "16", "--out", str(tmp_path / "x")])
    assert rc == 2  # finer than k_max = 8
    assert "k_max" in capsys.readouterr().err
    rc = main(["-w", str(ws.root), "eval", run.name, "--context", "30", "--horizon", "30", "--out", str(tmp_path / "y")])
    assert rc == 1
    assert "no held-out video" in capsys.readouterr().err


def test_eval_resolves_auto_precision_and_records_it(world, tmp_path, monkeypatch):
    import ahri_core.runtime as runtime
    from ahri_core.workspace import Workspace

    ws, _, run = world
    wm = load_world_model(run, ws)
    s = SamplingSettings(steps=[4], context=3, horizon=2, clips=3, seed=0, batch_size=2)
    shapes = []

    def fake_time_step(step, precisions=("fp32", "bf16"), budget_s=2.0):
        hook = wm.dynamics.register_forward_hook(lambda mod, args, out: shapes.append(tuple(args[0].shape[:2])))
        try:
            step("fp32")
        finally:
            hook.remove()
        return {"fp32": 0.02, "bf16": 0.01}

    monkeypatch.setattr(runtime, "native_bf16", lambda: (True, "test CPU with bf16"))
    monkeypatch.setattr(runtime, "time_step", fake_time_step)
    cache_ws = Workspace(tmp_path / "cachews")
    rep = evaluate(wm, settings=s, out_dir=tmp_path / "a", workspace=cache_ws, samples=0)
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["settings"]["precision"] == "bf16"
    assert m["precision"]["precision"] == "bf16" and m["precision"]["requested"] == "auto"
    assert "2.00x faster" in m["precision"]["reason"] and m["precision"]["cached"] is False
    assert shapes == [(2, 2)]  # timed at the sampler's batch (2 clips) and a cached call's frames (new + committed)
    assert (cache_ws.cache / "precision.json").is_file()
    # without native bf16: fp32 at once, nothing timed
    monkeypatch.setattr(runtime, "native_bf16", lambda: (False, "test CPU without bf16"))
    monkeypatch.setattr(runtime, "time_step", lambda *a, **k: pytest.fail("must not time"))
    rep = evaluate(wm, settings=s, out_dir=tmp_path / "b", workspace=cache_ws, samples=0)
    assert rep.metrics["precision"]["precision"] == "fp32" and rep.metrics["precision"]["reason"] == "test CPU without bf16"
    assert rep.metrics["settings"]["precision"] == "fp32"


def test_eval_reads_only_the_scored_frames(world, tmp_path, monkeypatch):
    """The truth of each clip comes from a range read of its video (one pass per video), never a whole video."""
    import ahri_core.video as video

    ws, _, run = world
    wm = load_world_model(run, ws)
    calls = []
    real_ranges = video.read_ranges

    def spy(path, ranges, **kw):
        calls.append((str(path), list(ranges)))
        return real_ranges(path, ranges, **kw)

    monkeypatch.setattr(video, "read_ranges", spy)
    monkeypatch.setattr(video, "read_frames", lambda *a, **k: pytest.fail("eval must not decode whole videos"))
    s = SamplingSettings(steps=[4], context=3, horizon=2, clips=4, seed=2, batch_size=4)
    rep = evaluate(wm, settings=s, out_dir=tmp_path / "r", workspace=ws, samples=0, precision="fp32")
    clips = rep.metrics["clips"]
    assert rep.metrics["truth"] == "video frames"
    assert len(calls) == len({c["video"] for c in clips})  # one pass per video
    asked = sorted(r for _, rs in calls for r in rs)
    assert asked == sorted((c["start"], c["start"] + 5) for c in clips)
