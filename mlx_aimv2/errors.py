"""The errors a user can cause, and the words for them. The CLI prints a UserError's message as one
line and exits 1; an OSError that reaches it is worded here, by its errno, in one line too."""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """Bad input from the user: a file, a name, a config. The message says what and what to do.
    Only input at fault raises one: a bug keeps its own exception, and its traceback."""


# What a reader raises for a file that is bad (truncated, foreign, not UTF-8, not JSON / TOML / YAML,
# damaged safetensors or pickle), as opposed to a bug in our code (TypeError, AttributeError, ...).
# MLX words a bad file as RuntimeError("[load] ..."); tokenizers raises plain Exception.
_FILE_FAULTS = (OSError, ValueError, EOFError, SyntaxError, KeyError, RuntimeError)
# the decoders' and parsers' own exception classes (rawpy's LibRawFileUnsupportedError, ...)
_FILE_READERS = ("rawpy", "pillow_heif", "PIL", "safetensors", "yaml", "tomllib", "tomli", "tokenizers")


def is_file_fault(e: BaseException) -> bool:
    """Whether an exception from reading a file says the file is bad (so a UserError may name it),
    not that our code is wrong (which must keep its traceback)."""
    return (
        isinstance(e, _FILE_FAULTS)
        or type(e) is Exception
        or type(e).__module__.split(".")[0] in _FILE_READERS
        or type(e).__name__ in ("SafetensorError", "UnpicklingError", "YAMLError", "ScannerError", "ParserError")
        or any(c.__name__ == "YAMLError" for c in type(e).__mro__)
    )


class Cancelled(Exception):
    """A long call stopped because its `cancel` event was set; what it had committed stays."""


def check_cancel(cancel) -> None:
    """Raise Cancelled once `cancel` (anything with is_set(), e.g. a threading.Event) is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled")


FULL = "the disk is full (or a file-size limit was hit): free space and run it again; nothing partial was kept"
_ADVICE = {
    errno.ENOSPC: FULL,
    errno.EDQUOT: FULL,
    errno.EFBIG: FULL,
    errno.EROFS: "a read-only file system: choose a writable place",
    errno.EACCES: "permission denied: choose a place you can write to, or fix its permissions",
    errno.EPERM: "not permitted: choose a place you can write to, or fix its permissions",
    errno.EEXIST: "a file is in the way where a folder must be: move it or choose another path",
    errno.ENOTDIR: "a file is in the way where a folder must be: move it or choose another path",
    errno.EISDIR: "is a folder: give a file name",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
}


def printable(text) -> str:
    """Text (a path, a message) as the terminal can print it: a file name that is not UTF-8 (held by
    Python with surrogate escapes) shows its odd bytes as \\xNN instead of failing to encode."""
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")


def os_error_line(e: OSError) -> str:
    """One line for a failed file operation: where, and what to do."""
    where = e.filename if e.filename is not None else "a file"
    where = printable(where)
    advice = _ADVICE.get(e.errno, e.strerror or str(e))
    return f"{where}: {advice}"


def write_failed(dst, e: Exception) -> UserError:
    """A write that failed half-way (MLX and safetensors word a full disk in their own errors)."""
    if isinstance(e, OSError):  # named by the destination, not by our temporary beside it
        if e.errno == errno.ENOENT:
            return UserError(f"{printable(dst)}: cannot create files in its folder; choose another place")
        return UserError(os_error_line(OSError(e.errno, e.strerror, str(dst))))
    return UserError(
        f"{dst}: could not write ({e}); if the disk is full, free space and run it again; nothing partial was kept"
    )
