"""ahri_core.video: probe, exact fps/size resampling, fits, corrupt files, atomic writing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ahri_core import video
from ahri_core.errors import VideoError
from tests.video_fixtures import decode_index, encode, index_frame, noise_clip

SRC_FPS, SRC_FRAMES = 30, 90  # 3 seconds


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    return encode(d / "index.mp4", (index_frame(i) for i in range(SRC_FRAMES)), SRC_FPS)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    d = tmp_path_factory.mktemp("noisy")
    return noise_clip(d / "noise.mp4", options={"movflags": "+faststart"})


def test_probe(clip):
    info = video.probe(clip)
    assert (info.fps, info.frames, info.width, info.height) == (30.0, 90, 320, 192)
    assert info.duration == pytest.approx(3.0, abs=1e-3)
    assert info.frames_counted and info.codec == "h264"


@pytest.mark.parametrize(
    "fmt, ext, options", [("matroska", "mkv", None), ("mp4", "mp4", {"movflags": "frag_keyframe+empty_moov"})]
)
def test_probe_counts_when_container_has_no_frame_count(tmp_path, fmt, ext, options):
    path = encode(
        tmp_path / f"v.{ext}", (index_frame(i, 64, 64, 8) for i in range(40)), 20, fmt=fmt, options=options
    )
    import av

    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # the container really carries no count
    counted = video.probe(path)
    assert counted.frames == 40 and counted.frames_counted
    estimated = video.probe(path, count=False)
    assert estimated.frames == 40 and not estimated.frames_counted  # from duration x fps
    assert video.check_video(path).frames == 40


def test_native_rate_and_size_every_frame_in_order(clip):
    frames = video.read_frames(clip)
    assert frames.shape == (SRC_FRAMES, 192, 320, 3) and frames.dtype == np.uint8
    assert [decode_index(f) for f in frames] == list(range(SRC_FRAMES))


@pytest.mark.parametrize("fps", [10, 24, 45, 30, 7.5])
def test_resample_fps_exact(clip, fps):
    frames = video.read_frames(clip, fps=fps, size=64)
    # output k is at k / fps and shows the source frame on screen then; k runs over [0, 3 s)
    count = math.ceil(SRC_FRAMES / SRC_FPS * fps - 1e-9)
    expected = [math.floor(k * SRC_FPS / fps + 1e-9) for k in range(count)]
    assert frames.shape == (len(expected), 64, 64, 3)
    assert [decode_index(f) for f in frames] == expected


def test_fit_crop_keeps_centre(clip):
    f = video.read_frames(clip, fps=10, size=64, fit="crop")
    assert f.shape[1:] == (64, 64, 3)
    # the red strips lie outside the centre square: none survives
    red = (f[..., 0] > 150) & (f[..., 1] < 100)
    assert not red.any()
    assert [decode_index(x) for x in f] == [3 * k for k in range(30)]


def test_fit_squash_keeps_everything(clip):
    f = video.read_frames(clip, fps=10, size=(48, 80), fit="squash")
    assert f.shape == (30, 48, 80, 3)
    assert f[:, :, :8, 0].mean() > 200 and f[:, :, :8, 1].mean() < 60  # left red strip, squashed
    assert [decode_index(x) for x in f] == [3 * k for k in range(30)]


def test_fit_letterbox_pads_black(clip):
    f = video.read_frames(clip, fps=5, size=64, fit="letterbox")
    # 320x192 scaled by 0.2 -> 64x38, centred: 13 black rows above, 13 below
    assert f.shape == (15, 64, 64, 3)
    assert (f[:, :13] == 0).all() and (f[:, 51:] == 0).all()
    assert f[:, 13:51, :4, 0].mean() > 200  # the red strip is inside the picture
    assert [decode_index(x, top=13, rows=38) for x in f] == [6 * k for k in range(15)]


def test_iter_frames_streams_and_stops(clip):
    it = video.iter_frames(clip, fps=10, size=32)
    first = next(it)
    assert first.shape == (32, 32, 3)
    it.close()  # abandoning the generator closes the file
    assert len(video.read_frames(clip, fps=10, size=32, max_frames=7)) == 7
    assert len(list(video.iter_frames(clip, max_frames=5))) == 5


def test_bad_arguments(clip):
    with pytest.raises(ValueError, match="fit"):
        next(video.iter_frames(clip, fit="stretch"))
    with pytest.raises(ValueError, match="fps"):
        next(video.iter_frames(clip, fps=0))


def test_missing_and_non_video_files(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        video.probe(tmp_path / "nope.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_text("certainly not a video\n" * 20)
    for fn in (video.probe, video.check_video, video.read_frames):
        with pytest.raises(VideoError, match="junk.mp4: cannot open") as e:
            fn(junk)
        assert "\n" not in str(e.value)


def test_corrupt_at_open(tmp_path, noisy):
    # moov at the end (the muxer's default): a cut download has no index at all
    slow = noise_clip(tmp_path / "slow.mp4", frames=30)
    cut = tmp_path / "cut_slow.mp4"
    cut.write_bytes(slow.read_bytes()[: slow.stat().st_size // 2])
    with pytest.raises(VideoError, match="cut_slow.mp4: cannot open as a video") as e:
        next(video.iter_frames(cut))
    assert e.value.frame_index is None
    head = tmp_path / "head.mp4"
    head.write_bytes(noisy.read_bytes()[:200])  # only the first bytes of the header
    with pytest.raises(VideoError, match="head.mp4: (cannot open|has no video stream)"):
        video.read_frames(head)


def test_corrupt_mid_stream_names_file_and_frame(tmp_path, noisy):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(noisy.read_bytes()[: noisy.stat().st_size // 2])
    seen = 0
    with pytest.raises(VideoError) as e:
        for _ in video.iter_frames(cut, size=32):
            seen += 1
    err = e.value
    assert err.path.endswith("cut.mp4") and "cut.mp4" in str(err)
    assert err.frame_index is not None and 20 < err.frame_index < 120
    assert f"at frame {err.frame_index}" in str(err)
    assert seen <= err.frame_index
    with pytest.raises(VideoError, match="cut.mp4"):
        video.check_video(cut)
    with pytest.raises(VideoError, match="cut.mp4"):
        video.check_video(cut, full=False)  # fewer packets than the header announces


def test_write_video_roundtrip_and_atomic(tmp_path):
    frames = np.stack([index_frame(i, 64, 96, 8) for i in range(25)])
    out = tmp_path / "w.mp4"
    assert video.write_video(out, frames, fps=25) == 25
    info = video.probe(out)
    assert (info.frames, info.fps, info.width, info.height) == (25, 25.0, 96, 64)
    back = video.read_frames(out)
    assert [decode_index(f) for f in back] == list(range(25))
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4
    # from an iterable too
    video.write_video(tmp_path / "gen.mp4", (f for f in frames[:5]), fps=10)
    assert video.probe(tmp_path / "gen.mp4").frames == 5

    def failing():
        yield frames[0]
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        video.write_video(tmp_path / "fail.mp4", failing(), fps=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen.mp4", "w.mp4"]  # nothing half-written
    with pytest.raises(VideoError, match="even"):
        video.write_video(tmp_path / "odd.mp4", np.zeros((2, 63, 64, 3), np.uint8), fps=10)
    with pytest.raises(VideoError, match="uint8"):
        video.write_video(tmp_path / "f.mp4", np.zeros((2, 64, 64, 3), np.float32), fps=10)
    assert not (tmp_path / "odd.mp4").exists() and not (tmp_path / "f.mp4").exists()


def test_to_mp4_copies_every_frame_from_mkv(tmp_path):
    src = encode(tmp_path / "v.mkv", (index_frame(i, 64, 96, 8) for i in range(30)), 30, fmt="matroska")
    dst = tmp_path / "v.mp4"
    video.to_mp4(src, dst)
    info = video.probe(dst)
    assert info.frames == 30 and info.fps == 30.0 and info.container.startswith("mov")
    assert np.array_equal(video.read_frames(src), video.read_frames(dst))  # packets copied, not re-encoded


def test_resize_frames_matches_decode_path(clip):
    raw = video.read_frames(clip, max_frames=3)
    assert np.array_equal(video.resize_frames(raw, 64), video.read_frames(clip, size=64, max_frames=3))
    assert video.resize_frames(raw[0], (32, 48), fit="squash").shape == (32, 48, 3)
