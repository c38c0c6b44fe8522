"""User paths -> image files: files, folders (recursive) and globs, with what matched nothing and why.
Links to folders are not followed (no loops); pipes and devices are not image files; in a folder, a
RAW file beside a same-named JPEG (a camera's RAW+JPEG mode) is one photo, read from the JPEG."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import List

from .formats import IMAGE_EXT, raw_with_jpeg


def images_under(folder: Path, missing: list) -> list[Path]:
    """Image files under a folder, recursively; unreadable sub-folders are reported, links to folders
    are not followed (no loops), pipes and devices are not files."""
    found = []
    for root, _, names in os.walk(
        folder, onerror=lambda e: missing.append((e.filename, "folder not readable; skipped"))
    ):
        here = set(names)
        found += [
            Path(root) / n
            for n in names
            if n.lower().endswith(IMAGE_EXT) and not raw_with_jpeg(n, here) and (Path(root) / n).is_file()
        ]
    if not found and not missing:
        missing.append((str(folder), f"folder holds no image files ({', '.join(IMAGE_EXT)})"))
    return sorted(found)


def expand_paths(paths: List[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (recursive, image extensions) and globs -> image files, plus what matched nothing."""
    files, missing = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files += images_under(path, missing)
        elif path.exists():
            files.append(path)
        elif any(ch in p for ch in "*?["):
            hits = sorted(Path(h) for h in glob.glob(p, recursive=True) if Path(h).is_file())
            files += hits
            if not hits:
                missing.append((p, "no file matches this pattern"))
        else:
            missing.append((p, "no such file or folder"))
    return files, missing
