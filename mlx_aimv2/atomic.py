"""Writing files and folders so that a crash, a kill or a full disk never leaves half of one, and
so that nothing we did not write is ever deleted."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from . import kinds
from .errors import UserError, write_failed
from .paths import children, is_empty

TMP_PREFIX = ".tmp-mlx-aimv2-"  # every temporary file and folder we make; only these are cleaned up


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, folder: bool) -> None:
    """mkstemp / mkdtemp make private (0600 / 0700) entries; what we publish gets the usual mode."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def write_file(path: Path, write: Callable[[Path], None]) -> Path:
    """write(tmp) into a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise write_failed(path, e) from None
    os.close(fd)
    try:
        write(Path(tmp))
        _usual_mode(Path(tmp), folder=False)
        os.replace(tmp, path)
    except Exception as e:
        if not failed_write(e):
            raise
        raise write_failed(path, e) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_destination(dst: Path, overwrite: bool = False) -> Path:
    """The folder a checkpoint may be written to: new, empty, one of ours, or (with overwrite) any
    folder, where only the files we write are replaced. Checked before any work is done."""
    dst = Path(dst).expanduser().resolve()
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: exists and is a file; give a folder to write the checkpoint into")
    if dst.is_dir() and not is_empty(dst) and not overwrite and not kinds.is_ours(dst):
        raise UserError(
            f"{dst}: exists and holds files that are not an mlx-aimv2 checkpoint; choose a new or "
            f"empty folder, or pass --overwrite to write ours beside them (nothing else is deleted)"
        )
    return dst


REPLACING = ".mlx-aimv2-replacing"  # in a folder while its files are replaced; its writer's pid


def write_folder(
    dst: Path, write: Callable[[Path], None], overwrite: bool = False, finish: Optional[Callable[[Path], None]] = None
) -> Path:
    """write(tmp) fills a temporary folder; a new destination is then renamed into place whole, an
    existing folder (empty ones too: it may be someone's working directory) gets each file renamed
    in, replacing only files of the same name, and then finish(dst) (dropping what the new files
    replace). An existing folder cannot be swapped whole, so it holds the REPLACING marker from
    before the first rename until after finish: a process ended between two renames (a kill, a power
    cut, a full disk) leaves a folder that check_whole refuses, never one that loads as neither model."""
    dst = check_destination(dst, overwrite)
    existing = dst.is_dir()
    parent = dst if existing else dst.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(parent)  # what a killed convert/export/train left here
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(), dir=parent))
    except OSError as e:
        raise write_failed(dst, e) from None
    try:
        write(tmp)
        _usual_mode(tmp, folder=True)
        _sync(tmp)  # the new files' bytes are on disk before any name points at them
        if existing:
            marker = _hold(dst)  # one writer at a time replaces a folder's files
            _sync_folder(dst)
            for f in children(tmp):
                os.replace(f, dst / f.name)
            if finish is not None:
                finish(dst)
            _sync_folder(dst)
            marker.unlink()
        else:
            try:
                os.replace(tmp, dst)
            except OSError:
                if not dst.is_dir():
                    raise
                # another process made the folder while this one wrote: its files stay, this run's go
                raise UserError(
                    f"{dst}: another process wrote this folder while this one was writing it; it holds that "
                    f"process's files, and nothing of this run was kept; run it again to replace them"
                ) from None
            if finish is not None:
                finish(dst)
        _sync_folder(dst)
    except Exception as e:
        if not failed_write(e):
            raise
        raise write_failed(dst, e) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _hold(folder: Path) -> Path:
    """Create the REPLACING marker (with this pid) exclusively: a second writer into the folder while
    the first replaces its files is refused, never interleaved; a marker whose writer has died is taken
    over. The marker holds its pid from its first instant (written beside, then hard-linked into place),
    so no other writer can find it empty and take it for a dead one's."""
    marker = Path(folder) / REPLACING
    for _ in range(2):
        try:
            _place_exclusively(marker, f"{os.getpid()}\n")
        except FileExistsError:
            check_whole(folder, writing=True)  # refuses while its writer lives
            marker.unlink(missing_ok=True)  # a dead writer's: this write mends the folder
            continue
        return marker
    raise UserError(f"{folder}: another process keeps starting writes into it; try again when it is done")


def _place_exclusively(path: Path, text: str) -> None:
    """Create `path` holding `text`, or raise FileExistsError when it exists: a file written beside and
    hard-linked into place (link fails on an existing name); where the volume has no hard links (FAT,
    exFAT), created exclusively and then written."""
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return
        except FileExistsError:
            raise
        except OSError:  # no hard links on this volume
            pass
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    finally:
        os.unlink(tmp)


def check_whole(folder: Path, writing: bool = False) -> None:
    """Refuse a folder whose files another write is replacing now, or was replacing when it ended."""
    marker = Path(folder) / REPLACING
    try:
        pid = int(marker.read_text().split()[0])
    except FileNotFoundError:
        return
    except (OSError, ValueError, IndexError):
        pid = None
    if pid == os.getpid():  # this process is writing it (a write's finish step reads it back)
        return
    if pid is not None and process_alive(pid):
        doing = "write into" if writing else "load"
        raise UserError(f"{folder}: another process ({pid}) is writing into it now; {doing} it once that write is done")
    if writing:
        return
    raise UserError(
        f"{folder}: a write into it was cut off half-way, so it holds files of two models; run the "
        f"convert or export that wrote it again (or delete the folder)"
    )


def _sync(folder: Path) -> None:
    """fsync every file in a folder, then the folder (on macOS fsync reaches the drive's cache only;
    the order of what reaches the disk is what matters here)."""
    for f in children(folder, kind="file"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders: the renames are still atomic, just not durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def failed_write(e: Exception) -> bool:
    """Whether an exception is the file system refusing a write (a full disk, a read-only one), in
    the words of each writer: OSError (Python, numpy), RuntimeError("[write] ...") (MLX),
    SafetensorError (safetensors)."""
    if isinstance(e, OSError):
        return True
    if isinstance(e, RuntimeError) and "write" in str(e).lower():
        return True
    return type(e).__name__ == "SafetensorError"


def _tmp_prefix() -> str:
    """Temporary names carry their writer's pid, so a cleanup spares the ones still being written."""
    return f"{TMP_PREFIX}{os.getpid()}-"


def process_alive(pid: int) -> bool:
    """Whether process `pid` still runs: another user's counts as running; on Linux a killed process
    its parent has not reaped yet (a zombie) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # not Linux, or gone meanwhile: kill(0) said it was there
        return True


def remove_orphans(folder: Path) -> list[Path]:
    """Temporary files and folders that a killed process of ours left in `folder` (its pid is gone)."""
    gone = []
    for p in children(folder, TMP_PREFIX + "*"):
        pid = p.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or process_alive(int(pid))):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        gone.append(p)
    return gone
