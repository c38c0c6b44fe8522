"""The one walker: every folder, glob, shard list and tar member the package reads is listed here, so
one rule decides what is a file of the user's and what is not.

What macOS leaves beside the user's files is never one of them: AppleDouble twins (`._name`, written
on exFAT / FAT / SMB volumes and into tar files made with macOS's tar), `.DS_Store`, Finder zips'
`__MACOSX/`, and the volume folders (`.Spotlight-V100`, `.Trashes`, `.fseventsd`, ...). Inside a
Photos library (`*.photoslibrary`, a folder to the shell) only `originals/` holds the photos; the
rest are derivatives and thumbnails of them. Files that iCloud has not downloaded (dataless
placeholders) are skipped, not read: reading one starts a download, or fails offline. Only macOS can
tell them (st_flags); elsewhere no file is one.

Links to folders are not followed (no loops); pipes and devices are not image files; in a folder, a
RAW file beside a same-named JPEG (a camera's RAW+JPEG mode) is one photo, read from the JPEG.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import stat
import unicodedata
from pathlib import Path
from typing import Iterable, List, Optional

from .formats import IMAGE_EXT, raw_with_jpeg

log = logging.getLogger("mlx_aimv2")

# what macOS writes beside the user's files, by exact name (folders and files alike)
MAC_NAMES = frozenset(
    {
        ".DS_Store", "__MACOSX", ".Spotlight-V100", ".Trashes", ".fseventsd", ".TemporaryItems",
        ".DocumentRevisions-V100", ".AppleDouble", ".AppleDB", ".AppleDesktop", ".apdisk", ".VolumeIcon.icns",
        ".com.apple.timemachine.donotpresent", "Icon\r",
    }
)  # fmt: skip
PHOTOS_LIBRARY = ".photoslibrary"
PHOTOS_ORIGINALS = ("originals", "Masters")  # Photos (macOS 10.15+); iPhoto and Photos before it
SF_DATALESS = 0x40000000  # macOS <sys/stat.h>: the file's data lives in the cloud (iCloud Drive, Photos)
DATALESS = "iCloud placeholder, not downloaded; skipped (download it in Finder or Photos to include it)"


def is_mac_litter(name: str) -> bool:
    """Whether a file or folder name is one that macOS writes, not the user."""
    return name.startswith("._") or name in MAC_NAMES


def is_mac_litter_path(path: str) -> bool:
    """Whether any part of a path (a tar member's name, a shard list's line) is macOS's."""
    return any(is_mac_litter(part) for part in str(path).replace("\\", "/").split("/") if part)


def is_dataless(path) -> bool:
    """A cloud placeholder whose data is not on this Mac (never true where st_flags does not exist)."""
    try:
        return _dataless(os.stat(path))
    except OSError:
        return False


def _dataless(st) -> bool:
    return bool(getattr(st, "st_flags", 0) & SF_DATALESS)


def children(folder: Path, pattern: Optional[str] = None, kind: Optional[str] = None) -> list[Path]:
    """A folder's entries, sorted, without macOS's files: those whose name matches `pattern`
    (fnmatch), and only folders (kind="dir") or only regular files (kind="file"); none when the
    folder is not there."""
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):  # as Path.glob: nothing there
        return []
    out = []
    for name in names:
        if is_mac_litter(name) or (pattern is not None and not fnmatch.fnmatchcase(name, pattern)):
            continue
        p = folder / name
        if (kind == "dir" and not p.is_dir()) or (kind == "file" and not p.is_file()):
            continue
        out.append(p)
    return sorted(out)


def subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders (no dot-folders, no macOS folders): an image folder's classes."""
    return [d for d in children(folder, kind="dir") if not d.name.startswith(".")]


def is_empty(folder: Path) -> bool:
    """Whether a folder holds nothing of the user's (a `.DS_Store` alone leaves it empty)."""
    return not children(folder)


def files_under(folder: Path, suffixes: tuple = IMAGE_EXT, missing: Optional[list] = None) -> list[Path]:
    """Files under a folder, recursively, whose suffix is one of `suffixes`; unreadable sub-folders and
    iCloud placeholders go to `missing` as (path, why); links to folders are not followed."""
    missing = [] if missing is None else missing
    found = []
    for root, dirs, names in os.walk(
        folder, onerror=lambda e: missing.append((e.filename, "folder not readable; skipped"))
    ):
        if root.endswith(PHOTOS_LIBRARY):  # a Photos library: its originals, not their derivatives
            keep = [d for d in dirs if d in PHOTOS_ORIGINALS]
            log.warning("%s: a Photos library; reading only its %s", root, "/".join(keep) or "originals (none found)")
            dirs[:] = keep
        dirs[:] = sorted(d for d in dirs if not is_mac_litter(d))
        here = set(names)
        for n in names:
            if is_mac_litter(n) or not n.lower().endswith(suffixes) or raw_with_jpeg(n, here):
                continue
            p = Path(root) / n
            try:
                st = os.stat(p)  # one stat tells a regular file and an iCloud placeholder
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if _dataless(st):
                missing.append((str(p), DATALESS))
                continue
            found.append(p)
    return sorted(found)


def images_under(folder: Path, missing: list) -> list[Path]:
    """Image files under a folder, recursively (files_under), with a note when there are none."""
    before = len(missing)
    found = files_under(folder, IMAGE_EXT, missing)
    if not found and len(missing) == before:
        missing.append((str(folder), f"folder holds no image files ({', '.join(IMAGE_EXT)})"))
    return found


def has_magic(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def glob_files(pattern: str) -> list[Path]:
    """The regular files a glob matches (`**` recursive), sorted, without macOS's files."""
    return sorted(
        Path(h) for h in glob.glob(pattern, recursive=True) if not is_mac_litter_path(h) and Path(h).is_file()
    )


def expand_paths(paths: List[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files, folders (recursive, image extensions) and globs -> image files, plus what matched nothing."""
    files, missing = [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files += images_under(path, missing)
        elif path.exists():
            if is_dataless(path):
                missing.append((p, DATALESS))
            else:
                files.append(path)
        elif has_magic(p):
            hits = [h for h in glob_files(p) if h.suffix.lower() in IMAGE_EXT or not path.suffix]
            files += hits
            if not hits:
                missing.append((p, "no file matches this pattern"))
        else:
            missing.append((p, "no such file or folder"))
    return files, missing


def listed_lines(lines: Iterable[str]) -> list[str]:
    """A list file's entries (a shard list): stripped, no blanks, no # comments, no macOS files."""
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and not is_mac_litter_path(line):
            out.append(line)
    return out


# -- one photo, one key --------------------------------------------------------------------------


def canonical(path, _listing=None) -> str:
    """The one spelling of a file, so that two spellings of one photo are one key: links resolved
    (`/tmp` is `/private/tmp` on a Mac, an alias is its target) and each part as its folder lists
    it, where the volume also opens it under another case or Unicode form (APFS and HFS+ are
    case-insensitive and normalisation-insensitive by default: `~/pictures/Cafe\u0301.jpg` is
    `~/Pictures/Caf\u00e9.jpg`)."""
    listing = _listing if _listing is not None else _Listings()
    parts = Path(os.path.realpath(os.path.expanduser(str(path)))).parts
    out = Path(parts[0])
    for part in parts[1:]:
        out = out / _on_disk_name(out, part, listing)
    return str(out)


def canonical_all(paths: Iterable) -> list[str]:
    """canonical() of many paths, each folder listed once."""
    listing = _Listings()
    return [canonical(p, listing) for p in paths]


class _Listings(dict):
    """Folder -> its entries, listed once for a batch of canonical() calls."""

    def __missing__(self, folder: Path):
        try:
            self[folder] = set(os.listdir(folder))
        except OSError:
            self[folder] = None
        return self[folder]


def _on_disk_name(folder: Path, name: str, listing: _Listings) -> str:
    entries = listing[folder]
    if entries is None or name in entries:
        return name
    want = unicodedata.normalize("NFC", name).casefold()
    for e in sorted(entries):
        if unicodedata.normalize("NFC", e).casefold() == want and _same_file(folder / e, folder / name):
            return e
    return name


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
