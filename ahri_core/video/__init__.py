"""Video I/O at the edge of the library (PyAV): probe, stream frames, write mp4.

- ``probe``: metadata of a file and a decode pass that proves it usable (:func:`probe`, :func:`check_video`);
- ``fit``: bringing frames to a size by a fit (pad, crop, squash) and the frame conventions;
- ``rates``: comparing and capping frame rates, and which source frame each output frame shows;
- ``read``: streaming frames resampled to a rate and a size (:func:`iter_frames`, :func:`read_ranges`);
- ``write``: encoding frames to an mp4 and storing another video as an mp4.

Frames here are uint8 arrays of shape (height, width, 3), RGB. Every PyAV failure becomes
:class:`~ahri_core.errors.VideoError` naming the file and the source frame reached.
"""

from __future__ import annotations

from .fit import content_box, float_to_frames, frames_to_float, resize_frames
from .probe import VIDEO_EXTENSIONS, VideoInfo, check_video, probe
from .rates import RATE_TOLERANCE, capped_fps, resampled_count, same_rate, source_indices
from .read import iter_frames, read_frames, read_range, read_ranges
from .write import to_mp4, write_video

__all__ = [
    "VideoInfo",
    "VIDEO_EXTENSIONS",
    "RATE_TOLERANCE",
    "same_rate",
    "capped_fps",
    "resampled_count",
    "source_indices",
    "probe",
    "check_video",
    "iter_frames",
    "read_frames",
    "read_range",
    "read_ranges",
    "resize_frames",
    "write_video",
    "to_mp4",
    "frames_to_float",
    "float_to_frames",
    "content_box",
]
