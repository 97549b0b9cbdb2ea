"""Import video files from a local folder (or one file) into the store, with the same checks as downloads.

Beside a video ``clip.mp4`` an optional ``clip.actions.npy`` (the project's action convention) is imported
with it, and an ahri sidecar ``clip.json`` (from another workspace) lends its title, source URL and action
meanings. A file already imported (same content) is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config.settings import FetchSettings
from ..errors import DataError, FetchError, VideoError
from ..filecheck import validated
from ..fileio import sha256_file
from ..progress import Progress, ensure
from ..video import VIDEO_EXTENSIONS, check_video
from .store import (
    FetchResult,
    ImportedSidecarCheck,
    existing,
    load_actions,
    read_sidecar,
    rebuild_manifest,
    store_file,
    unique_id,
)


def find_videos(path: str | os.PathLike) -> list[Path]:
    """Video files at ``path`` (a file, or a folder searched recursively; hidden entries skipped)."""
    root = Path(path).expanduser()
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FetchError(f"--path {root}: no such file or folder")
    found = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in VIDEO_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found)


def _lent(path: Path) -> dict:
    """The fields a video's ``<name>.json`` lends to its sidecar ({} without one, or for JSON that is not an
    object); :class:`DataError` naming the file when one of them has the wrong type."""
    side = read_sidecar(path)
    if side is None:
        return {}
    fix = "fix that field or remove the .json (its title, source URL and action names are optional)"
    return validated(ImportedSidecarCheck, side, path, fix).model_dump(exclude_none=True)


def import_local(
    path: str | os.PathLike,
    dest: str | os.PathLike,
    settings: FetchSettings | None = None,
    progress: Progress | None = None,
) -> FetchResult:
    """Check and store every video file under ``path`` into ``dest``; failures are reported, not raised."""
    settings = settings or FetchSettings()
    progress = ensure(progress)
    dest = Path(dest)
    files = find_videos(path)
    if not files:
        raise FetchError(f"--path {path}: no video files found (looked for {', '.join(VIDEO_EXTENSIONS)})")
    inside = dest.resolve()
    files = [f for f in files if inside not in f.resolve().parents]  # never re-import the store itself
    if settings.max_videos is not None:
        files = files[: settings.max_videos]
    result = FetchResult(source="local", dest=dest)
    progress.start("import", total=len(files))
    for f in files:
        try:
            digest = sha256_file(f)
            origin = f"file:{digest}"
            vid = unique_id(dest, f.stem, origin)
            if (prev := existing(dest, vid)) is not None and prev.get("origin") == origin:
                result.skipped.append(vid)
                continue
            checked = check_video(f, full=settings.verify == "full")
            side = _lent(f.with_suffix(".json"))
            apath = f.with_name(f"{f.stem}.actions.npy")
            actions = load_actions(apath) if apath.is_file() else None
            meanings = side.get("action_meanings") if actions is not None else None
            meta = {
                "source": "local",
                "source_url": side.get("source_url") or f.resolve().as_uri(),
                "origin": origin,
                "title": side.get("title") or f.stem,
                "uploader": side.get("uploader"),
                "upload_date": side.get("upload_date"),
                "extra": {"imported_from": str(f.resolve()), "original_sha256": digest},
            }
            record = store_file(
                dest, f, vid, meta, actions=actions, action_meanings=meanings, checked=checked
            )
            result.stored.append(record)
        except (VideoError, DataError) as e:
            result.failed.append((str(f), str(e).removeprefix(f"{f}: ")))
            progress.log(f"skipped {e}")
        except OSError as e:
            result.failed.append((str(f), f"cannot read ({e.strerror or e})"))
            progress.log(f"skipped {f}: cannot read ({e.strerror or e})")
        finally:
            progress.advance("import", 1, file=f.name)
    progress.finish("import", stored=len(result.stored))
    if result.stored:
        rebuild_manifest(dest)
    return result


__all__ = ["find_videos", "import_local"]
