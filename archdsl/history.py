"""What a training run produces: one record per epoch, and the History that `archdsl.train` returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from torch import nn

if TYPE_CHECKING:
    from .trainer import TrainConfig


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: d2l's three metrics and how long it took.

    `train_time` is the training phase (every step, with the batch gathering and resizing),
    measured with one device sync at its end; `epoch_time` adds the test pass.
    """

    epoch: int
    train_loss: float  # mean over the epoch's training examples
    train_acc: float
    test_acc: float  # on the whole test set
    examples: int  # training examples this epoch
    train_time: float
    epoch_time: float

    @property
    def step_examples_per_sec(self) -> float:
        """d2l's figure: training examples / time inside training steps."""
        return self.examples / self.train_time if self.train_time > 0 else float("nan")

    @property
    def wall_examples_per_sec(self) -> float:
        """Training examples / the whole epoch's wall time, test pass included."""
        return self.examples / self.epoch_time if self.epoch_time > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["step_examples_per_sec"] = round(self.step_examples_per_sec, 1)
        d["wall_examples_per_sec"] = round(self.wall_examples_per_sec, 1)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EpochRecord:
        return cls(**{f.name: d[f.name] for f in fields(cls)})


@dataclass
class History:
    """What `train` returns: one record per epoch, the trained model, and where the run lives."""

    records: list[EpochRecord]
    model: nn.Module
    device: str
    run_dir: Path | None = None
    config: TrainConfig | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[EpochRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> EpochRecord:
        return self.records[i]

    def _last(self, key: str) -> float:
        return getattr(self.records[-1], key) if self.records else float("nan")

    train_loss = property(lambda self: self._last("train_loss"))
    train_acc = property(lambda self: self._last("train_acc"))
    test_acc = property(lambda self: self._last("test_acc"))

    @property
    def metrics(self) -> dict[str, list[float]]:
        """Per-epoch lists, Keras-style: history.metrics["test_acc"][-1]."""
        keys = ("epoch", "train_loss", "train_acc", "test_acc")
        return {k: [getattr(r, k) for r in self.records] for k in keys}

    @property
    def best(self) -> EpochRecord | None:
        """The epoch with the highest test accuracy (the first, on ties): what checkpoints/best.pt holds."""
        return max(self.records, key=lambda r: r.test_acc, default=None) if self.records else None

    @property
    def examples_per_sec(self) -> float:
        """d2l's examples/sec: all training examples / the time spent in training steps."""
        t = sum(r.train_time for r in self.records)
        return sum(r.examples for r in self.records) / t if t > 0 else float("nan")

    @property
    def wall_examples_per_sec(self) -> float:
        """All training examples / the epochs' wall-clock time, test passes included."""
        t = sum(r.epoch_time for r in self.records)
        return sum(r.examples for r in self.records) / t if t > 0 else float("nan")

    def summary(self) -> str:
        """The seed's two closing lines."""
        return (f"loss {self.train_loss:.3f}, train acc {self.train_acc:.3f}, test acc {self.test_acc:.3f}\n"
                f"{self.examples_per_sec:.1f} examples/sec on {self.device}")

    def plot(self, title: str = ""):
        """The training curves as a matplotlib Figure (shown when it is a notebook cell's value)."""
        from .runs import plot_curves

        epochs = self.config.epochs if self.config else None
        return plot_curves([r.to_dict() for r in self.records], epochs, title)

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        if not self.records:
            return f"History(no epochs{where})"
        return (f"History({len(self.records)} epochs, train_loss={self.train_loss:.3f}, train_acc={self.train_acc:.3f}, "
                f"test_acc={self.test_acc:.3f}, device={self.device!r}{where})")
