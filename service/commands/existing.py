"""Results the command line would write over: refused unless ``--overwrite`` says so.

A trained checkpoint can be hours of work and a pruned model minutes to hours; the
same command line run twice must not lose the first result quietly. A directory
where a checkpoint file belongs, or a file where the output directory belongs, is
left to the checks that name those. (The daemon is stricter: a job's output
directory must not exist at all.)
"""

from __future__ import annotations

import os
from pathlib import Path

from pruner.train_config import state_path_for


def check_checkpoint(out: str | os.PathLike[str], resume: bool, overwrite: bool) -> None:
    """Refuse a ``train --out`` that holds a checkpoint, unless an interrupted run there is
    being resumed (its ``CKPT.state`` file exists) or ``overwrite``."""
    path = Path(out)
    if overwrite or not os.path.lexists(path) or path.is_dir():
        return
    state = state_path_for(path)
    if resume and state.is_file():
        return
    why = (
        f"--resume: {str(path)!r} is a finished run (no resume file {str(state)!r})"
        if resume
        else f"--out {str(path)!r} already exists"
    )
    raise ValueError(f"{why}; --overwrite replaces it, or name another --out")


def check_output_dir(out: str | os.PathLike[str], overwrite: bool) -> None:
    """Refuse a ``prune --out`` directory that already holds files, unless ``overwrite``."""
    path = Path(out)
    if overwrite or not path.is_dir():
        return
    try:
        held = sorted(p.name for p in path.iterdir())
    except OSError:  # unreadable: the output check names it
        return
    if held:
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        raise ValueError(
            f"--out {str(path)!r} already holds {shown}; --overwrite writes over them, or name "
            "another --out"
        )
