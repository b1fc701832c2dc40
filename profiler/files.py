"""Writing output files without following links.

Every file is first created under a fresh random name in the destination directory with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (what ``tempfile.mkstemp`` does), written, flushed, and
then renamed onto its name. A rename replaces a symlink planted at the destination; it
never writes through it, and a reader never sees half a file. With ``overwrite=False``
the last step is a hard link instead, which fails if the name exists in any form.

``writable_dir`` and ``writable_file`` check a destination before the work that fills it:
a run that trains or prunes for an hour must not fail at the end on a path it could have
refused at once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def new_file(path: str | Path, mode: int = 0o644, overwrite: bool = True) -> Iterator[IO[bytes]]:
    """``with new_file(p) as f: f.write(...)``: ``p`` appears, complete, when the block ends."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path, follow_symlinks=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes, mode: int = 0o644, overwrite: bool = True) -> Path:
    with new_file(path, mode, overwrite) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str, mode: int = 0o644, overwrite: bool = True) -> Path:
    return write_bytes(path, text.encode(), mode, overwrite)


def write_with(path: str | Path, writer: Callable[[IO[bytes]], object], mode: int = 0o644) -> Path:
    """``writer(f)`` fills the file (e.g. ``lambda f: torch.save(obj, f)``)."""
    with new_file(path, mode) as f:
        writer(f)
    return Path(path)


def writable_dir(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Check that ``path`` is, or can be made, a directory that takes new files; leave
    nothing behind (directories made for the check are removed again). A ``ValueError``
    naming ``what``, the path and the reason when it is not."""
    p = Path(path)
    for d in [p, *p.parents]:
        if d.exists() and not d.is_dir():
            where = "" if d == p else f" ({str(d)!r} in its path)"
            raise ValueError(
                f"{what} {str(p)!r}: a file{where}, not a directory; choose another path"
            )
    made: list[Path] = []
    try:
        for d in [*reversed(p.parents), p]:
            if not d.is_dir():
                d.mkdir()
                made.append(d)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise ValueError(
            f"cannot write into the {what} {str(p)!r}: {e.strerror or e}; choose another path"
        ) from e
    finally:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
    return p


def writable_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Check that ``path`` names a file its directory (made later if missing) can take; a
    ``ValueError`` when ``path`` is a directory or its directory takes no files."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(
            f"{what} {str(p)!r} is a directory; name the file, e.g. {str(p / 'model.pt')!r}"
        )
    if os.path.lexists(p) and (p.is_symlink() or not p.is_file()):
        # The file is written whole under a new name and renamed onto this one: a link, a
        # pipe or a device (/dev/stdout) would be replaced by a regular file, not written to.
        kind = "a symbolic link" if p.is_symlink() else "not a regular file"
        raise ValueError(
            f"{what} {str(p)!r} is {kind}; it would be replaced, not written through: "
            "name a regular file (the link's target, say)"
        )
    writable_dir(p.parent, f"directory of the {what}")
    return p
