"""Stage-by-stage progress for long work, so a pass of minutes is never silent.

On a terminal the running stage is a live status line and each finished stage is printed with its
time and row counts; piped or in CI, every finished stage is one plain line (`stage …: 12.3 s, 1,234
rows`). The producer (a Dagster run, a sync, a backtest) only calls `start` and `finish`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.status import Status


@dataclass
class StageRecord:
    """One finished stage: how long it took and what it moved."""

    stage: str
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    failed: bool = False
    skipped: bool = False

    def line(self) -> str:
        if self.skipped:
            return f"{self.stage}: skipped (a stage it depends on did not produce its input)"
        moved = ", ".join(f"{value:,} {name}" for name, value in self.counts.items())
        state = "FAILED after" if self.failed else "done in"
        return f"{self.stage}: {state} {self.seconds:.1f} s" + (f" ({moved})" if moved else "")


class Progress:
    """Reports stages as they start and finish; keeps what finished for a summary."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal if live is None else live
        self.finished: list[StageRecord] = []
        self._started: dict[str, float] = {}
        self._status: Status | None = None

    def start(self, stage: str, detail: str = "") -> None:
        self._started[stage] = time.monotonic()
        if self._status is not None:
            self._status.update(f"{stage} {detail}…".replace("  ", " "))

    def finish(
        self,
        stage: str,
        counts: Mapping[str, int] | None = None,
        *,
        seconds: float | None = None,
        failed: bool = False,
        skipped: bool = False,
    ) -> StageRecord:
        started = self._started.pop(stage, None)
        elapsed = seconds if seconds is not None else (time.monotonic() - started if started else 0.0)
        record = StageRecord(stage, elapsed, {k: int(v) for k, v in (counts or {}).items()}, failed, skipped)
        self.finished.append(record)
        if self.live:
            mark = "[red]✗[/red] " if failed else "[yellow]–[/yellow] " if skipped else "[green]✓[/green] "
            self.console.print(mark + record.line())
        else:
            self._plain(record.line())
        return record

    def _plain(self, line: str) -> None:
        stream: TextIO = self.console.file if self.console.file is not None else sys.stderr
        print(line, file=stream, flush=True)

    @contextmanager
    def running(self, what: str) -> Iterator[Progress]:
        """A live status line on a terminal while `what` runs; nothing extra when piped."""
        if not self.live:
            yield self
            return
        with self.console.status(what) as status:
            self._status = status
            try:
                yield self
            finally:
                self._status = None
