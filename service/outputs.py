"""Job output directories: each job gets a new one, created by the daemon when it accepts the job.

Created with ``mkdir`` (never ``exist_ok``), so one job can never write into another's
directory or into one someone prepared with links in it; the name is taken at submit
time, so two queued jobs cannot share it either. Mode 0750: the group may read the
pruned model, no one but the daemon's user may add to it.
"""

from __future__ import annotations

import os

from .protocol import ProtocolError

OUTPUT_DIR_MODE = 0o750


def make_output_dir(path: str, field: str) -> None:
    try:
        os.mkdir(path, OUTPUT_DIR_MODE)
    except FileExistsError:
        raise ProtocolError(
            "conflict", f"{path!r} exists; name a directory that does not exist yet", field
        ) from None
    except FileNotFoundError:
        raise ProtocolError(
            "not_found",
            f"the directory {os.path.dirname(path)!r} for {path!r} does not exist",
            field,
        ) from None
    except OSError as e:
        raise ProtocolError("bad_request", f"cannot create {path!r}: {e.strerror}", field) from None
    os.chmod(path, OUTPUT_DIR_MODE)  # mkdir's mode passes through the umask
