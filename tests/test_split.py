"""The train/validation split by whole video: the train split is never empty."""

from __future__ import annotations

import numpy as np
import pytest

from ahri_core.data.frames import load_frame_data
from ahri_core.data.split import _unit_hash, split_videos
from ahri_core.data.videos import VideoRef
from ahri_core.errors import DataError


def test_a_lone_video_trains_even_when_its_hash_would_hold_it_out():
    assert _unit_hash("v0") < 0.1  # by the hash rule alone, v0 is a validation video
    assert split_videos(["v0"], 0.1) == {"v0": "train"}
    assert split_videos(["v0", "v0"], 0.1) == {"v0": "train"}  # one video named twice is one video
    assert split_videos([], 0.1) == {}


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_train_is_never_empty_and_two_videos_hold_one_out(n, frac):
    for shift in range(5):
        ids = [f"clip{shift}-{i}" for i in range(n)]
        s = split_videos(ids, frac)
        assert set(s) == set(ids)
        assert list(s.values()).count("train") >= 1
        if n >= 2:
            assert list(s.values()).count("val") >= 1
        # videos kept out of the fix-ups follow the hash rule
        ranked = sorted(ids, key=_unit_hash)
        for i in ids:
            if i not in (ranked[0], ranked[-1]):
                assert s[i] == ("val" if _unit_hash(i) < frac else "train")


def test_every_hash_below_the_fraction_keeps_the_highest_for_training():
    ids = [f"v{i}" for i in range(300)]
    low = sorted(ids, key=_unit_hash)[:3]
    frac = np.nextafter(max(_unit_hash(i) for i in low), 1.0)  # all three hash below it
    s = split_videos(low, float(frac))
    assert s[max(low, key=_unit_hash)] == "train"
    assert [s[i] for i in low].count("val") == 2
    with pytest.raises(DataError, match="val_fraction"):
        split_videos(low, 1.0)


def test_tokenizer_frame_data_with_one_video_trains_on_it(tmp_path):
    def decoder(path, fps, size):
        rng = np.random.default_rng(0)
        for _ in range(5):
            yield rng.integers(0, 256, (size.height, size.width, 3), dtype=np.uint8)

    src = tmp_path / "v0.mp4"
    src.write_bytes(b"decoded by the fake decoder")
    data = load_frame_data([VideoRef(path=src, id="v0")], 20, 16, tmp_path / "cache", val_fraction=0.1, decoder=decoder)
    assert data.split == {"v0": "train"}
    assert data.train.ids == ["v0"] and len(data.train) == 5
    # nothing held out: validation reuses the training video and says so (the trainer logs a note)
    assert not data.val_is_heldout and data.val.ids == ["v0"]
