"""Everything for humans goes to stderr through one Rich console; stdout is for machine output.

Rich honours ``NO_COLOR`` and writes plain text when stderr is not a terminal;
progress bars are transient and switched off there, so logs stay clean.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

Item = TypeVar("Item")
# Characters that move the cursor, recolour the terminal or reorder text: C0 and C1 controls (newline,
# carriage return, ESC, CSI) and the bidirectional overrides that can make "gnp.exe" read "exe.png".
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with every control and bidirectional character written as a visible escape (ESC as
    '\\x1b', a right-to-left override as '\\u202e', a newline as '\\n'): what a terminal or a report may
    show of a string that came from a file, so that it can neither forge a line nor reorder what it says."""
    return _INVISIBLE.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)


def shown(text: object) -> str:
    """A user-supplied string (a file name, a caption, a path, a message quoting them) as the console may
    print it inside Rich markup: control characters written as visible escapes (so a newline in a file
    name cannot print a fake verdict line, and an escape sequence never reaches the terminal), and Rich's
    markup escaped (so '[red]x.png' keeps its brackets)."""
    return escape(visible(str(text)))


def stderr_console() -> Console:
    """The console for humans. Emoji codes are off: a file named ':fire:.png' prints as written. Lines of text
    are not cut by Rich (the terminal wraps them), so a path in a message is never split inside a word."""
    return Console(stderr=True, emoji=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second; the task's description names the items ('extracting features (images)')."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "", style="progress.data.speed")


class StageProgress:
    """One progress bar per phase of an audit (hashing, extraction, permutations)."""

    def __init__(self, console: Console | None = None) -> None:
        enabled = console is not None and console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=not enabled,
        )

    def __enter__(self) -> StageProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def track(self, description: str) -> Callable[[list[Item]], Iterable[Item]]:
        """A wrapper that shows progress while a list is iterated."""
        return lambda items: self._progress.track(items, total=len(items), description=description)

    def counter(self, description: str) -> Callable[[int, int], None]:
        """A callback ``(done, total)`` that moves one bar."""
        task = self._progress.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            self._progress.update(task, completed=done, total=total)

        return update


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    """Record how long the block took under ``stage`` in ``timings`` (seconds; the report's timings)."""
    started = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - started, 3)
