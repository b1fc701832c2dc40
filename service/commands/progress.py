"""A rich progress bar that speaks the profiler's ``progress(what, done, total)`` callback.

Piped to a file or a log, a bar redrawn in place turns into wrapped fragments; there
each new phase is one plain line on stderr instead.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

Update = Callable[[str, int, int], None]


@contextlib.contextmanager
def progress_bar(title: str, disable: bool = False) -> Iterator[Update]:
    if disable:
        yield lambda what, done, total: None
        return
    if not Console().is_terminal:  # the bar draws on stdout
        yield _phase_lines(title)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(title, total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=f"{title}: {what}", completed=done, total=total or None)

        yield update


def _phase_lines(title: str) -> Update:
    """One ``title: what`` line on stderr each time ``what`` changes."""
    last: list[str] = []

    def update(what: str, done: int, total: int) -> None:
        if last != [what]:
            last[:] = [what]
            print(f"{title}: {what}", file=sys.stderr, flush=True)

    return update
