"""Whether a file could have been written by someone other than the daemon's user (or root).

A model file is only as trustworthy as the directories above it: whoever can write a
directory can replace what is in it. So the file, its model directory and every
directory in between must be owned by this user or root and writable by no one else;
above the model directory, a world-writable directory is accepted only with the sticky
bit (like /tmp, where others cannot rename what they do not own).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def untrusted_reason(path: Path, root: Path) -> str | None:
    """Why ``path`` (resolved, inside ``root``) may hold someone else's content; None if it cannot."""
    try:
        return _reason(path, root)
    except OSError as e:
        return f"its permissions cannot be checked ({e})"


def _reason(path: Path, root: Path) -> str | None:
    trusted = {os.geteuid(), 0}
    inside = [path, *[p for p in path.parents if p.is_relative_to(root)]]
    for p in inside:
        st = p.stat()
        if st.st_uid not in trusted:
            return f"{str(p)!r} belongs to uid {st.st_uid}, not to this user or root"
        if st.st_mode & _OTHERS_WRITE:
            return (
                f"{str(p)!r} is writable by its group or by everyone (mode {st.st_mode & 0o777:o})"
            )
    for p in root.parents:
        st = p.stat()
        if st.st_uid not in trusted:
            return f"{str(p)!r}, above the model directory, belongs to uid {st.st_uid}"
        if st.st_mode & _OTHERS_WRITE and not st.st_mode & stat.S_ISVTX:
            return (
                f"{str(p)!r}, above the model directory, is writable by others "
                f"(mode {st.st_mode & 0o777:o}, no sticky bit)"
            )
    return None
