"""The run directory: what a training run leaves behind, written so that nothing is ever half-written.

    runs/<spec name>/<timestamp>/
        spec.arch            the spec text the run was built from
        config.json          the resolved config: params, recipe, flags, versions, device
        metrics.jsonl        one JSON object per finished epoch
        curves.png           train loss, train acc and test acc by epoch, like d2l's Animator
        checkpoints/last.pt  the state after the last finished epoch (model, optimizer, RNG, history)
        checkpoints/best.pt  the same, at the epoch with the best test accuracy
        model.pt             the final weights (a state_dict), once training has finished

Every file is written to a temporary name and renamed into place, so a crash or Ctrl-C
leaves the previous version whole. Checkpoints hold only tensors and plain containers,
so they load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Mapping

import torch

from .errors import ArchError

CHECKPOINT_FORMAT = 1
CHECKPOINTS = ("last", "best")


def user_cache_dir() -> Path:
    """archdsl's per-user cache (data sets, layer timings): $XDG_CACHE_HOME/archdsl, or ~/.cache/archdsl."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "archdsl"


class RunDir:
    """One run's directory and the files in it."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    spec = property(lambda self: self.path / "spec.arch")
    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    curves = property(lambda self: self.path / "curves.png")
    weights = property(lambda self: self.path / "model.pt")

    def checkpoint(self, which: str = "last") -> Path:
        return self.path / "checkpoints" / f"{which}.pt"

    # Creating and opening ------------------------------------------------------

    @classmethod
    def create(cls, out: str | os.PathLike[str] | None, name: str, root: str | os.PathLike[str] = "runs") -> RunDir:
        """A new, empty run directory: `out` itself, or `root/<name>/<timestamp>` when out is None.

        Refuses an `out` that already holds files, so an earlier run is never overwritten.
        """
        if out is not None:
            path = Path(out)
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                what = "a run" if (path / "config.json").exists() else "files"
                fix = f"continue it with --resume {path}, or " if what == "a run" else ""
                raise ArchError(f"--out {path} already holds {what}; {fix}choose a new directory",
                                where=str(path))
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise ArchError(f"cannot create the run directory: {e.strerror}", where=str(path)) from None
            return cls(path)
        stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
        base = Path(root) / name
        for n in range(1, 1000):  # two runs in the same second get -2, -3, ...
            path = base / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
            except OSError as e:
                raise ArchError(f"cannot create the run directory: {e.strerror}", where=str(path)) from None
        raise ArchError("too many runs started in the same second", where=str(base))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """An existing run directory, as `--resume` and `archdsl eval` take it."""
        run = cls(path)
        if not run.path.is_dir():
            raise ArchError("no such run directory (runs are under runs/<spec name>/<timestamp>/)",
                            where=str(run.path))
        if not run.config.is_file():
            raise ArchError("not a run directory: it has no config.json", where=str(run.path))
        return run

    # Plain files ---------------------------------------------------------------

    def write_spec(self, text: str) -> None:
        atomic_write_text(self.spec, text)

    def write_config(self, config: Mapping[str, Any]) -> None:
        atomic_write_text(self.config, json.dumps(config, indent=2, default=str) + "\n")

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads(self.config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ArchError(f"cannot read the run's config: {e}", where=str(self.config)) from None

    def write_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rewrite metrics.jsonl whole (on resume: the checkpoint's history is the truth)."""
        atomic_write_text(self.metrics, "".join(json.dumps(dict(r)) + "\n" for r in rows))

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row)) + "\n")
            f.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_curves(self, rows: list[Mapping[str, Any]], epochs: int, title: str = "") -> bool:
        """curves.png, redrawn during a run so it can be watched.

        Without matplotlib (a bare GPU box, say) there is no PNG, and training goes on:
        returns False; metrics.jsonl holds the same numbers.
        """
        try:
            fig = plot_curves(rows, epochs, title)
        except ImportError:
            return False
        _atomic_write(self.curves, lambda f: fig.savefig(f, format="png", dpi=100))
        return True

    # Checkpoints -------------------------------------------------------------

    def save_checkpoint(self, state: Mapping[str, Any], which: str = "last") -> Path:
        path = self.checkpoint(which)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(dict(state), path)
        return path

    def load_checkpoint(self, which: str = "last", map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.checkpoint(which)
        if not path.is_file():
            if which == "best":
                hint = "the run stopped before its first epoch ended; resume it to train"
            else:
                hint = "the run stopped before training started; start it again"
            raise ArchError(f"no {which} checkpoint in this run ({hint})", where=str(path))
        return load_checkpoint(path, map_location)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `RunDir.save_checkpoint`, loaded with weights_only=True (no code runs)."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or holding objects weights_only refuses
        reason = " ".join(str(e).split())[:300]
        raise ArchError(f"cannot load this checkpoint: {type(e).__name__}: {reason}", where=str(path)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArchError("not an archdsl checkpoint (or one from another version)", where=str(path))
    return state


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or Ctrl-C at any point leaves either the old file or the new one, never a torn one.
    """
    _atomic_write(path, lambda f: torch.save(obj, f))
    _fsync_dir(Path(path).parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """write(file) into a temporary file beside `path`, fsync, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable where the OS allows it (POSIX); harmless elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def plot_curves(rows: list[Mapping[str, Any]], epochs: int | None = None, title: str = ""):
    """A matplotlib Figure like d2l's Animator: train loss, train acc and test acc by epoch.

    Made without pyplot, so it never changes a notebook's backend or opens a window.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(4.5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [r["epoch"] for r in rows]
    for key, label, style in (("train_loss", "train loss", "-"), ("train_acc", "train acc", "m--"),
                              ("test_acc", "test acc", "g-.")):
        ax.plot(xs, [r[key] for r in rows], style, label=label, marker="o" if len(xs) == 1 else None)
    ax.set_xlabel("epoch")
    last = max([epochs or 1, *xs, 1])
    ax.set_xlim(1, last if last > 1 else 2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
