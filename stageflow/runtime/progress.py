"""Progress of a long loop (training epochs), shown the way its reader can see it.

In a terminal: one line that updates in place, with a bar and the ETA. Anywhere else (Domino's job log, the
local runner's pipe, a file): one plain log line per step, because carriage returns in a log arrive as one
garbled line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, TextIO

log = logging.getLogger("stageflow")

BAR_WIDTH = 20


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def progress_line(label: str, step: int, total: int, elapsed: float, values: dict[str, float]) -> str:
    """`epoch 3/10: loss 0.4321, 1.2 s, ETA 2.8 s`: the ETA assumes the remaining steps take the mean so far."""
    shown = ", ".join(f"{name} {value:.4f}" for name, value in values.items())
    eta = elapsed / step * (total - step)
    return f"{label} {step}/{total}: {shown + ', ' if shown else ''}{duration(elapsed)}, ETA {duration(eta)}"


class Progress:
    def __init__(self, total: int, label: str = "epoch", stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.total, self.label, self.clock = total, label, clock
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = clock()
        self.width = 0

    def step(self, step: int, **values: float) -> None:
        line = progress_line(self.label, step, self.total, self.clock() - self.started, values)
        if not self.tty:
            log.info("%s", line)
            return
        done = BAR_WIDTH * step // self.total
        line = f"[{'#' * done}{'.' * (BAR_WIDTH - done)}] {line}"
        self.stream.write("\r" + line.ljust(self.width))  # pad over a longer previous line
        self.width = len(line)
        if step == self.total:
            self.stream.write("\n")
        self.stream.flush()
