"""``ahri fetch`` through yt-dlp against a local http.server: direct links, RSS, HTML <video> pages,
archive resume, bad files, 404 entries, and the no-network failure."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from ahri_cli.main import main
from ahri_core.config.settings import FetchSettings
from ahri_core.errors import FetchError
from ahri_core.fileio import sha256_file
from ahri_core.progress import RecordingProgress
from ahri_core.sources import list_videos, youtube
from ahri_core.sources.store import ARCHIVE, STAGING
from tests.video_fixtures import serve, small_clip

FAST = FetchSettings(
    sleep_interval=0, max_sleep_interval=0, sleep_requests=0, retries=0, socket_timeout=5, connect_timeout=2
)
QUICK_FLAGS = [
    "--sleep-interval",
    "0",
    "--max-sleep-interval",
    "0",
    "--sleep-requests",
    "0",
    "--retries",
    "0",
]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A web root with clips, an RSS feed (one entry missing), an HTML page and a fake mp4."""
    root = tmp_path_factory.mktemp("site")
    for i, name in enumerate(["alpha", "beta", "gamma", "delta", "eps", "zeta"]):
        small_clip(root / f"{name}.mp4", frames=10 + i, seed=i)
    (root / "fake.mp4").write_text("<html>not a video at all</html>\n" * 30)
    with serve(root) as base:
        (root / "feed.xml").write_text(
            f"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>Replays</title><link>{base}/</link><description>test</description>
<item><title>Beta match</title><link>{base}/beta.mp4</link></item>
<item><title>Gone match</title><link>{base}/gone.mp4</link></item>
<item><title>Gamma match</title><link>{base}/gamma.mp4</link></item>
</channel></rss>"""
        )
        (root / "mixed.xml").write_text(
            f"""<?xml version="1.0"?>
<rss version="2.0"><channel><title>Mixed</title><link>{base}/</link><description>test</description>
<item><title>Fake video</title><link>{base}/fake.mp4</link></item>
<item><title>Alpha</title><link>{base}/alpha.mp4</link></item>
</channel></rss>"""
        )
        (root / "page.html").write_text(
            f"""<html><head><title>Clips page</title></head><body>
<video src="{base}/delta.mp4"></video>
<video controls><source src="eps.mp4" type="video/mp4"></video>
</body></html>"""
        )
        yield root, base


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())


def test_direct_rss_and_html(site, tmp_path):
    root, base = site
    dest = tmp_path / "yt"
    res = youtube.fetch_urls([f"{base}/alpha.mp4", f"{base}/feed.xml", f"{base}/page.html"], dest, FAST)
    ids = sorted(r.id for r in res.stored)
    assert ids == ["alpha", "beta", "gamma", "page-1", "page-2"]
    # the feed's missing entry is reported, the others were fetched anyway
    assert len(res.failed) == 1 and "gone" in res.failed[0][0] and "404" in res.failed[0][1]
    by_id = {r.id: r for r in list_videos(dest)}
    assert sorted(by_id) == ids
    beta = by_id["beta"].meta
    assert beta["title"] == "Beta match" and beta["source_url"] == f"{base}/beta.mp4"
    assert beta["frames"] == 11 and beta["fps"] == 20.0 and (beta["width"], beta["height"]) == (64, 48)
    assert beta["sha256"] == sha256_file(dest / "beta.mp4") and beta["actions_file"] is None
    assert by_id["page-2"].meta["frames"] == 14  # eps.mp4 via a relative <source> tag
    manifest = json.loads((dest / "manifest.json").read_text())
    assert [v["id"] for v in manifest["videos"]] == ids and manifest["count"] == 5
    assert not (dest / STAGING).exists()  # nothing half-downloaded left behind


def test_archive_skips_done_videos_and_resumes(site, tmp_path):
    root, base = site
    dest = tmp_path / "yt"
    feed = f"{base}/feed.xml"
    first = youtube.fetch_urls([feed], dest, FAST.model_copy(update={"max_videos": 1}))
    assert [r.id for r in first.stored] == ["beta"]  # "interrupted" after one video
    assert "max-videos" in " ".join(first.notes)
    before = {p.name: p.stat().st_mtime_ns for p in dest.glob("*.mp4")}
    second = youtube.fetch_urls([feed], dest, FAST)
    assert [r.id for r in second.stored] == ["gamma"]  # picks up where it stopped
    assert "beta" in second.skipped
    third = youtube.fetch_urls([feed], dest, FAST)
    assert third.stored == [] and sorted(set(third.skipped)) == ["beta", "gamma"]  # downloads nothing
    assert dest.joinpath("beta.mp4").stat().st_mtime_ns == before["beta.mp4"]
    assert sorted(dest.joinpath(ARCHIVE).read_text().split("\n")[:-1]) == ["generic beta", "generic gamma"]


def test_partial_download_is_completed(site, tmp_path):
    root, base = site
    dest = tmp_path / "yt"
    staging = dest / STAGING
    staging.mkdir(parents=True)
    data = (root / "zeta.mp4").read_bytes()
    (staging / "Generic-zeta.mp4.part").write_bytes(data[: len(data) // 2])  # a killed earlier run
    res = youtube.fetch_urls([f"{base}/zeta.mp4"], dest, FAST)
    assert [r.id for r in res.stored] == ["zeta"] and res.ok
    assert res.stored[0].meta["frames"] == 15
    assert not staging.exists()


def test_non_video_is_rejected_and_removed(site, tmp_path):
    root, base = site
    dest = tmp_path / "yt"
    for urls in ([f"{base}/fake.mp4", f"{base}/alpha.mp4"], [f"{base}/mixed.xml"]):  # alone, and in a feed
        res = youtube.fetch_urls(urls, dest, FAST)
        assert (
            len(res.failed) == 1
            and res.failed[0][0] == "fake"
            and "not a decodable video" in res.failed[0][1]
        )
        assert not any(
            "fake" in f for f in _files(dest)
        )  # not in the store, not in staging, not in the archive
        assert "fake" not in (dest / ARCHIVE).read_text()
        assert [r.id for r in list_videos(dest)] == ["alpha"]


def test_match_title(site, tmp_path):
    root, base = site
    res = youtube.fetch_urls(
        [f"{base}/feed.xml"], tmp_path / "yt", FAST.model_copy(update={"match_title": "GAMMA"})
    )
    assert [r.id for r in res.stored] == ["gamma"]
    assert not (tmp_path / "yt" / "beta.mp4").exists()
    assert any("did not match" in n or "title" in n for n in res.notes)


def test_format_selector_prefers_single_file_video_under_max_height():
    sel = youtube.format_selector(480)
    parts = sel.split("/")
    assert parts[0].startswith("bv[height<=?480]") and "avc1" in parts[0]
    assert all("height<=?480" in p for p in parts) and "+" not in sel  # never a merge


def test_channel_url():
    assert youtube.channel_url("domisumReplay-Garen") == "https://www.youtube.com/@domisumReplay-Garen/videos"
    assert youtube.channel_url("@x") == "https://www.youtube.com/@x/videos"
    with pytest.raises(FetchError):
        youtube.channel_url("two words")


def test_cli_fetch_urls(site, tmp_path, capsys):
    root, base = site
    ws = tmp_path / "ws"
    rc = main(
        [
            "--workspace",
            str(ws),
            "fetch",
            "--url",
            f"{base}/alpha.mp4",
            "--url",
            f"{base}/beta.mp4",
            *QUICK_FLAGS,
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "alpha" in out.out and "beta" in out.out and "2 stored" in out.err
    assert sorted(p.name for p in (ws / "videos" / "youtube").glob("*.mp4")) == ["alpha.mp4", "beta.mp4"]
    # a 404 among good URLs: the good one is stored, the exit code says something failed
    rc = main(
        [
            "--workspace",
            str(ws),
            "fetch",
            "--url",
            f"{base}/nope.mp4",
            "--url",
            f"{base}/gamma.mp4",
            *QUICK_FLAGS,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "nope" in err and "404" in err and "1 failed" in err
    assert (ws / "videos" / "youtube" / "gamma.mp4").is_file()


# ----------------------------------------------------------------------------------------------
# No network
# ----------------------------------------------------------------------------------------------


def _unresolvable(monkeypatch):
    monkeypatch.setattr(youtube, "YOUTUBE_HOST", "www.youtube.invalid")  # RFC 2606: never resolves


def test_channel_without_network_fails_fast_with_one_line(tmp_path, monkeypatch, capsys):
    _unresolvable(monkeypatch)
    ws = tmp_path / "ws"
    t0 = time.monotonic()
    rc = main(["--workspace", str(ws), "fetch", "--channel", "domisumReplay-Garen"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 1 and elapsed < 10
    assert err.startswith("error: cannot reach youtube.com (") and "\n" not in err
    assert not ws.exists() or _files(ws) == []


def test_unreachable_host_is_refused_quickly(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/feed.xml"
    with pytest.raises(FetchError, match=rf"cannot reach 127.0.0.1 \(cannot connect to 127.0.0.1:{port}"):
        youtube.fetch_urls([url], tmp_path / "yt", FAST)
    assert not (tmp_path / "yt").exists()


def test_hanging_resolver_times_out(monkeypatch):
    def hang(*a, **k):
        time.sleep(30)

    monkeypatch.setattr(youtube.socket, "getaddrinfo", hang)
    t0 = time.monotonic()
    with pytest.raises(FetchError, match="cannot reach youtube.com .*longer than 0.5 s"):
        youtube.check_reachable(youtube.channel_url("domisumReplay-Garen"), timeout=0.5, label="youtube.com")
    assert time.monotonic() - t0 < 3


def _resolvable(host: str) -> bool:
    try:
        youtube._resolve(host, 443, 3)
        return True
    except (OSError, TimeoutError):
        return False


@pytest.mark.skipif(
    _resolvable("www.youtube.com"), reason="this machine can reach YouTube; would really download"
)
def test_real_cli_channel_offline(tmp_path):
    ws = tmp_path / "ws"
    env = {**os.environ, "COLUMNS": "200"}
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ahri_cli.main",
            "--workspace",
            str(ws),
            "fetch",
            "--channel",
            "domisumReplay-Garen",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - t0 < 30
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach youtube.com (")
    assert not ws.exists() or _files(ws) == []


def test_progress_reports_failures(site, tmp_path):
    root, base = site
    prog = RecordingProgress()
    youtube.fetch_urls([f"{base}/feed.xml"], tmp_path / "yt", FAST, progress=prog)
    assert any("gone" in m and "404" in m for m in prog.messages)
    assert ("finish", "videos", {"stored": 2}) in prog.events


def test_preflight_covers_search_urls_and_skips_other_inputs(monkeypatch):
    _unresolvable(monkeypatch)
    with pytest.raises(FetchError, match=r"cannot reach youtube.com \(cannot resolve www.youtube.invalid"):
        youtube.preflight(["ytsearch3:garen replay"], timeout=2)
    youtube.preflight(["file-or-other-input-yt-dlp-may-know"], timeout=2)  # left to yt-dlp
