"""ahri_core.video.read_ranges / read_range: the frames of a few ranges in one streaming pass."""

from __future__ import annotations

import numpy as np
import pytest

from ahri_core import video
from ahri_core.errors import VideoError
from ahri_core.video.fit import _Resizer
from tests.video_fixtures import decode_index, encode, index_frame, noise_clip

SRC_FPS, SRC_FRAMES = 30, 90


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("range")
    return encode(d / "index.mp4", (index_frame(i) for i in range(SRC_FRAMES)), SRC_FPS)


@pytest.mark.parametrize("fps", [None, 10, 45, 7.5])
def test_ranges_equal_slices_of_the_whole_video(clip, fps):
    whole = video.read_frames(clip, fps=fps, size=(40, 48), fit="crop")
    ranges = [(5, 12), (0, 3), (10, 14), (len(whole) - 4, len(whole) + 6), (len(whole) + 2, len(whole) + 5), (7, 7)]
    parts = video.read_ranges(clip, ranges, fps=fps, size=(40, 48), fit="crop")
    assert len(parts) == len(ranges)
    for (a, b), p in zip(ranges, parts, strict=True):
        assert p.dtype == np.uint8 and p.shape[1:] == (40, 48, 3)
        np.testing.assert_array_equal(p, whole[a:b])  # bit-identical, also past the end (shorter / empty)
    assert [decode_index(f) for f in parts[0]] == [decode_index(f) for f in whole[5:12]]
    one = video.read_range(clip, 3, 9, fps=fps, size=(40, 48), fit="crop")
    np.testing.assert_array_equal(one, whole[3:9])


def test_only_frames_inside_a_range_are_converted(clip, monkeypatch):
    calls = []
    real = _Resizer.__call__

    def spy(self, frame):
        calls.append(1)
        return real(self, frame)

    monkeypatch.setattr(_Resizer, "__call__", spy)
    parts = video.read_ranges(clip, [(80, 84), (60, 62)], size=32)
    assert [len(p) for p in parts] == [4, 2] and len(calls) == 6  # not the 84 frames before the end
    assert [decode_index(f) for f in parts[1]] == [60, 61]


def test_decoding_stops_after_the_last_range(tmp_path):
    src = noise_clip(tmp_path / "noise.mp4", options={"movflags": "+faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])  # the second half of the frames is gone
    with pytest.raises(VideoError, match="cut.mp4"):
        video.read_frames(cut, size=16)
    head = video.read_ranges(cut, [(2, 6), (0, 3)], size=16)  # never reaches the damage
    np.testing.assert_array_equal(head[0], video.read_frames(src, size=16, max_frames=6)[2:6])
    assert [len(p) for p in head] == [4, 3]


def test_bad_ranges_and_arguments(clip):
    with pytest.raises(ValueError, match="range"):
        video.read_ranges(clip, [(5, 2)])
    with pytest.raises(ValueError, match="range"):
        video.read_ranges(clip, [(-1, 2)])
    with pytest.raises(ValueError, match="fps"):
        video.read_ranges(clip, [(0, 2)], fps=0)
    assert video.read_ranges(clip, []) == []
    empty = video.read_ranges(clip, [(3, 3)], size=16)
    assert empty[0].shape == (0, 16, 16, 3)
