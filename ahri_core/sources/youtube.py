"""Fetch videos with yt-dlp (its Python API, never a subprocess): channels, playlists, single videos,
RSS feeds, web pages with ``<video>`` tags, direct file links: whatever yt-dlp understands.

There is no ffmpeg to merge separate audio and video streams, so the format choice asks for one file
holding video: video-only first (preferring H.264 in mp4), then a combined one, never taller than
``max_height`` when the height is known. Downloads land in ``<dest>/.partial/`` (yt-dlp resumes them
there); a post-processor then decodes each file with PyAV and stores it with its sidecar, or deletes it
and reports the failure. yt-dlp's download archive (``<dest>/archive.txt``) records a video only after it
is stored, so the next run skips it and an interrupted run picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config.settings import FetchSettings
from ..errors import FetchError, VideoError
from ..progress import Progress, ensure
from ..video import check_video
from .store import ARCHIVE, STAGING, FetchResult, rebuild_manifest, store_file, unique_id

YOUTUBE_HOST = "www.youtube.com"


def channel_url(name: str) -> str:
    """The videos tab of a channel given by handle (``domisumReplay-Garen`` or ``@...``) or by URL."""
    name = name.strip()
    if re.match(r"^https?://", name):
        return name
    handle = name.lstrip("@")
    if not handle or re.search(r"[\s/?#]", handle):
        raise FetchError(f"--channel {name!r} is not a channel handle (e.g. domisumReplay-Garen)")
    return f"https://{YOUTUBE_HOST}/@{handle}/videos"


def format_selector(max_height: int) -> str:
    """One-file formats only (no merging without ffmpeg), H.264/mp4 video-only preferred."""
    h = f"[height<=?{max_height}]"
    return "/".join(
        [
            f"bv{h}[vcodec^=avc1][ext=mp4]",
            f"bv{h}[ext=mp4]",
            f"bv{h}",
            f"b{h}[ext=mp4]",
            f"b{h}",
        ]
    )


def js_runtimes() -> dict[str, dict]:
    """JavaScript runtimes on PATH, for yt-dlp's YouTube challenge solving (it only tries deno by default)."""
    found = {}
    for key, exe in (("deno", "deno"), ("node", "node"), ("bun", "bun"), ("quickjs", "qjs")):
        path = shutil.which(exe)
        if path:
            found[key] = {"path": path}
    return found


# ----------------------------------------------------------------------------------------------
# Reachability: fail in seconds with one clear line instead of yt-dlp's retries
# ----------------------------------------------------------------------------------------------


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo with a deadline (the system resolver has none of its own)."""
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["addrs"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            box["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"resolving {host} took longer than {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["addrs"]


def check_reachable(url: str, timeout: float = 5.0, label: str | None = None) -> None:
    """Raise :class:`FetchError` ("cannot reach LABEL (...)") unless a TCP connection to the URL's
    host (or to the proxy the environment names for it) opens within ``timeout`` seconds."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"{url!r} is not an http(s) URL")
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    label = label or host
    via = ""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        pp = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if pp.hostname:
            host, port, via = pp.hostname, pp.port or 80, " via proxy"
    try:
        addrs = _resolve(host, port, timeout)
    except TimeoutError as e:
        raise FetchError(f"cannot reach {label} ({e})") from None
    except OSError as e:
        raise FetchError(f"cannot reach {label} (cannot resolve {host}{via}: {e.strerror or e})") from None
    last: OSError | None = None
    for family, kind, proto, _, addr in addrs[:3]:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout)
                s.connect(addr)
            return
        except OSError as e:
            last = e
    reason = "timed out" if isinstance(last, TimeoutError) else (getattr(last, "strerror", None) or str(last))
    raise FetchError(f"cannot reach {label} (cannot connect to {host}:{port}{via}: {reason})")


# ----------------------------------------------------------------------------------------------
# yt-dlp glue
# ----------------------------------------------------------------------------------------------

_ARCHIVED = re.compile(r"has already been recorded in the archive")
_TITLE_SKIP = re.compile(r"does not pass filter|title did not match pattern")
_NOISE = ("Falling back on generic information extractor",)


class _Logger:
    """Routes yt-dlp's messages: errors become failures, archive hits become skips."""

    def __init__(self, result: FetchResult, progress: Progress) -> None:
        self.result = result
        self.progress = progress
        self.title_skips = 0

    def debug(self, msg: str) -> None:
        if _ARCHIVED.search(msg):
            m = re.match(r"\[download\] ([^:]+):", msg)
            self.result.skipped.append(m.group(1) if m else msg)
        elif _TITLE_SKIP.search(msg):
            self.title_skips += 1

    def info(self, msg: str) -> None:
        self.debug(msg)

    def warning(self, msg: str) -> None:
        msg = re.sub(r"^WARNING:\s*", "", msg)
        if not any(n in msg for n in _NOISE):
            self.result.notes.append(msg)

    def error(self, msg: str) -> None:
        msg = re.sub(r"^ERROR:\s*", "", msg)
        msg = re.sub(r"^Postprocessing:\s*", "", msg)
        m = re.match(r"\[[\w:]+\] ([^:]+): (.*)$", msg, re.S)
        what, why = (m.group(1), m.group(2)) if m else ("", msg)
        why = why.split("\n")[0]
        self.result.failed.append((what, why))
        self.progress.log(f"failed: {what + ': ' if what else ''}{why}")


def _upload_date(v: Any) -> str | None:
    s = str(v or "")
    return f"{s[:4]}-{s[4:6]}-{s[6:8]}" if re.fullmatch(r"\d{8}", s) else None


def _make_store_pp(dest: Path, source: str, settings: FetchSettings, result: FetchResult, progress: Progress):
    from yt_dlp.postprocessor.common import PostProcessor
    from yt_dlp.utils import PostProcessingError

    class StorePP(PostProcessor):
        """Decode-check the download, store it as mp4 + sidecar, delete the staging file."""

        def run(self, info: dict):
            src = Path(info["filepath"])
            url = info.get("webpage_url") or info.get("original_url") or info.get("url") or str(src)
            label = info.get("id") or src.stem
            try:
                checked = check_video(src, full=settings.verify == "full")
                origin = f"{info.get('extractor_key') or info.get('extractor')}:{info.get('id')}:{url}"
                vid = unique_id(dest, str(info.get("id") or src.stem), origin)
                meta = {
                    "source": source,
                    "source_url": url,
                    "origin": origin,
                    "title": info.get("title"),
                    "uploader": info.get("uploader") or info.get("channel") or info.get("uploader_id"),
                    "upload_date": _upload_date(info.get("upload_date")),
                    "extra": {
                        "extractor": info.get("extractor_key") or info.get("extractor"),
                        "remote_id": info.get("id"),
                        "format_id": info.get("format_id"),
                        "playlist": info.get("playlist_title") or info.get("playlist"),
                        "channel_url": info.get("channel_url"),
                        "original_url": info.get("original_url"),
                    },
                }
                record = store_file(dest, src, vid, meta, checked=checked)
            except VideoError as e:
                detail = str(e).removeprefix(f"{e.path}: ")
                raise PostProcessingError(
                    f"[store] {label}: not a decodable video, removed ({detail})"
                ) from None
            finally:
                with contextlib.suppress(FileNotFoundError):
                    src.unlink()
            result.stored.append(record)
            progress.advance("videos", 1, last=record.id)
            return [], info

    return StorePP()


def preflight(urls: list[str], timeout: float, labels: dict[str, str] | None = None) -> None:
    """Check every distinct host behind ``urls`` (see :func:`check_reachable`). yt-dlp's search
    pseudo-URLs (``ytsearch5:garen``) check YouTube; other non-http inputs are left to yt-dlp."""
    labels = labels or {}
    seen: set[str] = set()
    for u in urls:
        if re.match(r"^ytsearch\w*:", u):
            target, label = f"https://{YOUTUBE_HOST}/", "youtube.com"
        elif re.match(r"^https?://", u):
            target, label = u, labels.get(u)
        else:
            continue
        host = urlsplit(target).netloc
        if host not in seen:
            seen.add(host)
            check_reachable(target, timeout, label)


def fetch_urls(
    urls: list[str],
    dest: str | Path,
    settings: FetchSettings | None = None,
    progress: Progress | None = None,
    source: str = "youtube",
    check: bool = True,
    labels: dict[str, str] | None = None,
) -> FetchResult:
    """Download every video yt-dlp finds behind ``urls`` into ``dest`` (see the module docstring).

    ``max_videos`` applies per URL. With ``check``, every host is probed first and an unreachable one
    raises :class:`FetchError` before anything is written. Per-video failures are collected in the
    result, not raised.
    """
    import yt_dlp
    from yt_dlp.utils import MaxDownloadsReached

    settings = settings or FetchSettings()
    progress = ensure(progress)
    dest = Path(dest)
    labels = labels or {}
    if check:
        preflight(urls, settings.connect_timeout, labels)
    result = FetchResult(source=source, dest=dest)
    created = not dest.exists()
    staging = dest / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    logger = _Logger(result, progress)
    opts: dict[str, Any] = {
        "format": format_selector(settings.max_height),
        "outtmpl": {"default": str(staging / "%(extractor_key)s-%(id)s.%(ext)s")},
        "download_archive": str(dest / ARCHIVE),
        # 'only_download' (not True) lets our post-processor's refusal stop the archive entry.
        "ignoreerrors": "only_download",
        "fixup": "never",
        "noprogress": True,
        "quiet": True,
        "logger": logger,
        "continuedl": True,
        "retries": settings.retries,
        "fragment_retries": settings.retries,
        "extractor_retries": settings.retries,
        "socket_timeout": settings.socket_timeout,
        "matchtitle": settings.match_title,
        "max_downloads": settings.max_videos,
        "lazy_playlist": True,
        "writeinfojson": False,
        "color": {"stdout": "no_color", "stderr": "no_color"},
    }
    runtimes = js_runtimes()
    if runtimes:
        opts["js_runtimes"] = runtimes
    elif any("youtube.com" in u or "youtu.be" in u for u in urls):
        result.notes.append(
            "no JavaScript runtime (deno, node, bun, qjs) on PATH: yt-dlp may find few or no YouTube formats"
        )
    if settings.sleep_interval > 0:
        opts["sleep_interval"] = settings.sleep_interval
        opts["max_sleep_interval"] = max(settings.sleep_interval, settings.max_sleep_interval)
    if settings.sleep_requests > 0:
        opts["sleep_interval_requests"] = settings.sleep_requests

    def hook(d: dict) -> None:
        if d.get("status") == "finished":
            progress.finish("download")
        elif d.get("status") == "downloading":
            total = d.get("total_bytes") or d.get("total_bytes_estimate")
            name = (d.get("info_dict") or {}).get("id", "")
            progress.advance(
                "download", 0, video=name, mb=(d.get("downloaded_bytes") or 0) / 1e6, of_mb=(total or 0) / 1e6
            )

    progress.start("videos", total=None)
    try:
        for u in urls:
            with yt_dlp.YoutubeDL(opts) as ydl:
                ydl.add_post_processor(
                    _make_store_pp(dest, source, settings, result, progress), when="after_move"
                )
                ydl.add_progress_hook(hook)
                try:
                    ydl.extract_info(u, download=True)
                except MaxDownloadsReached:
                    result.notes.append(
                        f"{u}: stopped after {settings.max_videos} new video(s) (--max-videos)"
                    )
                except yt_dlp.utils.DownloadError as e:  # only when yt-dlp gives up on the URL itself
                    result.failed.append((u, re.sub(r"^ERROR:\s*", "", str(e)).split("\n")[0]))
        if logger.title_skips:
            result.notes.append(
                f"{logger.title_skips} video(s) skipped: title does not match {settings.match_title!r}"
            )
    finally:
        progress.finish("videos", stored=len(result.stored))
        with contextlib.suppress(OSError):
            staging.rmdir()  # only when empty: partial downloads stay for the next run
        if result.stored or (dest / "manifest.json").exists():
            rebuild_manifest(dest)
        if created:
            with contextlib.suppress(OSError):
                dest.rmdir()  # only when nothing at all was written
    return result


def fetch_channel(
    name: str,
    dest: str | Path,
    settings: FetchSettings | None = None,
    progress: Progress | None = None,
    check: bool = True,
) -> FetchResult:
    """All videos of a YouTube channel's videos tab (newest first, as YouTube lists them)."""
    url = channel_url(name)
    return fetch_urls(
        [url], dest, settings, progress, source="youtube", check=check, labels={url: "youtube.com"}
    )


__all__ = [
    "YOUTUBE_HOST",
    "channel_url",
    "format_selector",
    "js_runtimes",
    "check_reachable",
    "preflight",
    "fetch_urls",
    "fetch_channel",
]
