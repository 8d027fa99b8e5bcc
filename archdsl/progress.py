"""Showing a training run to a person: a live progress bar in a terminal, plain lines elsewhere.

These are the edge of the trainer (it never prints itself): the CLI picks `RichReporter`
when stdout is a terminal and `PlainReporter` otherwise; `archdsl.train(..., progress=True)`
uses `PlainReporter`, which suits notebooks and logs. Both end with the seed's two lines:

    loss 0.332, train acc 0.878, test acc 0.883
    3059.6 examples/sec on cuda:0
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from .errors import printable
from .history import EpochRecord, History
from .trainer import Reporter, RunInfo, TrainConfig


def header_lines(info: RunInfo) -> list[str]:
    """What is about to happen, and where each recipe value came from."""
    c: TrainConfig = info.config
    shape = "x".join(map(str, info.input_shape))
    out = [f"training on {info.device}: {info.name}, {info.n_params:,} params, input {shape}"]
    out.append(f"data: {info.dataset}, {info.n_train:,} train / {info.n_test:,} test images ({info.data_source})")
    parts = []
    for key, label in (("batch_size", "batch"), ("lr", "lr"), ("epochs", "epochs"), ("resize", "resize"),
                       ("seed", "seed"), ("limit", "limit"), ("init", "init")):
        value = getattr(c, key)
        if value is None:
            continue
        src = info.sources.get(key, "default")
        parts.append(f"{label} {value:g}" if isinstance(value, float) else f"{label} {value}")
        parts[-1] += f" ({src})"
    out.append("recipe: " + ", ".join(parts))
    opts = [f"channels_last {'on' if info.channels_last else 'off'}",
            f"bf16 autocast {'on' if info.amp else 'off'}", f"compile {'on' if c.compile else 'off'}",
            f"tune {'off' if info.tuning is None else 'on'}"]
    out.append("options: " + ", ".join(opts))
    if info.tuning is not None:
        out.append(f"tuning: {info.tuning}")
    if info.run_dir is not None:
        resumed = f" (resuming after epoch {info.start_epoch})" if info.start_epoch else ""
        out.append(f"run directory: {info.run_dir}{resumed}")
    out += [f"note: {n}" for n in info.notes]
    return [printable(line) for line in out]  # paths and names may hold control characters


def epoch_line(r: EpochRecord, epochs: int, best: bool = False) -> str:
    width = len(str(epochs))
    return (f"epoch {r.epoch:>{width}}/{epochs}  loss {r.train_loss:.3f}  train acc {r.train_acc:.3f}  "
            f"test acc {r.test_acc:.3f}  {r.wall_examples_per_sec:,.0f} ex/s  {r.epoch_time:.1f}s"
            + ("  *" if best else ""))


def closing_lines(h: History) -> list[str]:
    """Both speeds, where the run is, then the seed's two summary lines, last."""
    out = []
    if h.records:
        wall = sum(r.epoch_time for r in h.records)
        n = len(h.records)
        out.append(f"{n} epoch{'s' * (n != 1)}, {wall:.1f}s: {h.wall_examples_per_sec:,.1f} examples/sec wall-clock "
                   f"(training + test), {h.examples_per_sec:,.1f} in training steps (d2l's measure)")
        best = h.best
        if h.run_dir is not None and best is not None:
            out.append(f"run directory: {h.run_dir} (best test acc {best.test_acc:.3f} at epoch {best.epoch})")
    out += h.summary().splitlines()
    return [printable(line) for line in out]


class PlainReporter(Reporter):
    """One line per epoch, flushed at once, so logs and pipes show progress as it happens."""

    def __init__(self, write: Callable[[str], None] | None = None, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._write = write

    def _out(self, line: str) -> None:
        if self._write is not None:
            self._write(line)
            return
        stream = self._stream or sys.stdout
        stream.write(line + "\n")
        stream.flush()

    def start(self, info: RunInfo) -> None:
        for line in header_lines(info):
            self._out(line)

    def epoch_end(self, record: EpochRecord, epochs: int, best: bool) -> None:
        self._out(epoch_line(record, epochs, best))

    def end(self, history: History) -> None:
        for line in closing_lines(history):
            self._out(line)


class RichReporter(PlainReporter):
    """A bar per epoch with live loss and accuracy; finished epochs stay as plain lines above it."""

    REFRESH = 0.1  # seconds between bar updates: a few Python calls, never a device sync

    def __init__(self, console=None) -> None:
        from rich.console import Console

        self.console = console or Console()
        super().__init__(write=lambda line: self.console.print(line, markup=False, highlight=False,
                                                               soft_wrap=True))
        self.progress = None
        self.task = None
        self._next = 0.0

    def epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.close()
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[live]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=True, refresh_per_second=10,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=batches, live="")
        self._next = 0.0

    def step(self, batch: int, batches: int, live: Callable[[], tuple[float, float] | None]) -> None:
        now = time.monotonic()
        if self.progress is None or (now < self._next and batch < batches):
            return
        self._next = now + self.REFRESH
        values = live()
        text = f"loss {values[0]:.3f}  train acc {values[1]:.3f}" if values else ""
        self.progress.update(self.task, completed=batch, live=text)
        if batch == batches:
            self.progress.update(self.task, live=text + "  testing...")

    def epoch_end(self, record: EpochRecord, epochs: int, best: bool) -> None:
        self.close()
        super().epoch_end(record, epochs, best)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
