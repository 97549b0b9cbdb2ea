"""benchmarks/record_camera_games.py stores clips like ``ahri fetch --source gym``; each game runs only where its
package is installed (none of them is a dependency of ahri)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "record_camera_games.py"


def _script():
    spec = importlib.util.spec_from_file_location("record_camera_games", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_package_names_the_install():
    mod = _script()
    with pytest.raises(mod.MissingGame, match="pip install some-game"):
        mod._need("no_such_game_module_here", "some-game")


@pytest.mark.parametrize(
    "game, module, levels, fps",
    [("mario", "gym_super_mario_bros", "1-1", 15.0), ("doom", "vizdoom", "E1M1", 17.5)],
)
def test_records_store_clips_with_actions(tmp_path, capsys, game, module, levels, fps):
    pytest.importorskip(module)
    mod = _script()
    out = tmp_path / game
    args = ["--game", game, "--out", str(out), "--clips", "1", "--frames", "12", "--min-frames", "2"]
    assert mod.main([*args, "--levels", levels]) == 0
    side = json.loads((out / f"{game}-s0-0000.json").read_text())
    assert side["fps"] == fps and side["action_kind"] == "discrete"
    assert len(side["action_meanings"]) == side["action_count"]
    actions = np.load(out / side["actions_file"])
    assert actions.shape == (side["frames"],) and actions[0] == -1 and (actions[1:] >= 0).all()
    assert json.loads((out / "manifest.json").read_text())["count"] == 1
    assert mod.main([*args, "--levels", levels]) == 0  # deterministic: nothing new the second time
    assert "0 stored, 1 already stored" in capsys.readouterr().out


def test_sticky_sets_how_often_the_policy_keeps_its_action():
    mod = _script()

    def switches(sticky: float) -> float:
        policy = mod.BiasedStickyPolicy([1.0] * 6, np.random.default_rng(0), sticky)
        acts = [policy() for _ in range(4000)]
        return float(np.mean([a != b for a, b in zip(acts, acts[1:])]))

    # a redraw picks another of 6 equally likely actions 5/6 of the time
    assert switches(mod.STICKY_PROB) == pytest.approx((1 - mod.STICKY_PROB) * 5 / 6, abs=0.03)
    assert switches(0.5) == pytest.approx(0.5 * 5 / 6, abs=0.03)
    with pytest.raises(SystemExit, match="--sticky 1.0"):
        mod.record("doom", Path("/nonexistent-store"), 1, 2, 0, sticky=1.0)
