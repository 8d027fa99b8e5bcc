"""The run directory: what a training run leaves behind, written so that nothing is ever half-written.

    runs/<spec name>/<timestamp>/
        spec.arch            the spec text the run was built from
        config.json          the resolved config: params, recipe, flags, versions, device
        metrics.jsonl        one JSON object per finished epoch
        curves.png           train loss, train acc and test acc by epoch, like d2l's Animator
        checkpoints/last.pt  the state after the last finished epoch (model, optimizer, RNG, history)
        checkpoints/best.pt  the same, at the epoch with the best test accuracy (a hard link to last.pt)
        model.pt             the final weights (a state_dict), once training has finished
        .lock                held by the one process that writes the run (archdsl/lock.py)

Every file is written to a temporary name and renamed into place, so a crash or Ctrl-C
leaves the previous version whole; a write that fails (a full disk, no permission) is a
RunWriteError naming the file, with no temporary file left. Checkpoints hold only tensors
and plain containers, so they load with `torch.load(..., weights_only=True)`; config.json and
checkpoints are checked field by field when read (archdsl/schema.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import torch

from .errors import ArchError
from .lock import LOCK_NAME, RunLock
from .memory import show_bytes
from .schema import CHECKPOINT, CONFIG, validate

CHECKPOINT_FORMAT = 1
MAX_CONFIG_BYTES = 16 << 20  # config.json is a few kB; a bigger one is not a run's, and is not read into memory
_TEMPORARY = re.compile(r"\..+\.\d+\.tmp")  # what _atomic_write names its files: .NAME.PID.tmp


class RunWriteError(ArchError):
    """A file of the run directory could not be written (a full disk, no permission, ...); its old version is whole."""


class RunDir:
    """One run's directory and the files in it.

    A process that writes a run holds its lock (`take_lock`, released by `release`): a second
    writer is refused, naming the first one's PID.
    """

    def __init__(self, path: str | os.PathLike[str], made: tuple[Path, ...] = ()) -> None:
        self.path = Path(path)
        self.made = made  # folders `create` made for this run (deepest first): `discard` removes them
        self.lock = RunLock(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    spec = property(lambda self: self.path / "spec.arch")
    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    curves = property(lambda self: self.path / "curves.png")
    weights = property(lambda self: self.path / "model.pt")

    def checkpoint(self, which: str = "last") -> Path:
        return self.path / "checkpoints" / f"{which}.pt"

    # Creating, opening and locking ------------------------------------------------

    @classmethod
    def create(cls, out: str | os.PathLike[str] | None, name: str, root: str | os.PathLike[str] = "runs") -> RunDir:
        """A new run directory, locked: `out` itself, or `root/<name>/<timestamp>` when out is None.

        Refuses an `out` that holds files, so an earlier run is never overwritten, except what a run
        leaves when it stops before its first checkpoint (spec.arch, config.json, temporary files):
        those are cleared, so the same command can be run again.
        """
        if out is not None:
            path = Path(out)
            if _leftovers(path) is None:
                raise _taken(path)
            run = cls(path, _mkdir(path))
            run.take_lock()
            leftovers = _leftovers(path)  # again: a writer that held the lock until now may have filled it
            if leftovers is None:
                run.release()
                raise _taken(path)
            for p in leftovers:  # now ours: a run that never started, or a dead writer's temporary files
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    _unlink(p)
            return run
        stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
        base = Path(root) / name
        made_base = _mkdir(base)
        for n in range(1, 1000):  # two runs in the same second get -2, -3, ...
            path = base / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise _write_error(path, e, "the run directory") from None
            run = cls(path, (path, *made_base))
            run.take_lock()
            return run
        raise ArchError("too many runs started in the same second", where=str(base))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """An existing run directory, as `--resume` and `archdsl eval` take it."""
        run = cls(path)
        if not run.path.is_dir():
            raise ArchError("no such run directory (runs are under runs/<spec name>/<timestamp>/)",
                            where=str(run.path))
        if not run.config.exists():
            raise ArchError("not a run directory: it has no config.json", where=str(run.path))
        return run

    def take_lock(self) -> None:
        """Become this run's one writer; ArchError naming the PID of a process that already is.

        The folders `create` made for a run that cannot be locked are removed again, if empty;
        nothing in them is touched (they may be another writer's).
        """
        try:
            self.lock.acquire()
        except OSError as e:
            self._remove_made()
            raise _write_error(self.path / LOCK_NAME, e, "the run's lock file") from None
        except ArchError:
            self._remove_made()
            raise

    def release(self) -> None:
        self.lock.release()

    def discard(self) -> None:
        """Remove a run `create` made whose setup failed, so that it blocks nothing; then let go of the lock."""
        if self.path.is_dir():
            for p in self.path.iterdir():
                if p.name == LOCK_NAME:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    _unlink(p)
        self.release()
        self._remove_made()

    def _remove_made(self) -> None:
        for folder in self.made:  # deepest first; a folder that is not empty (another run's) stays
            try:
                folder.rmdir()
            except OSError:
                break

    def remove_temporary(self) -> int:
        """Delete the temporary files a killed writer left (call with the lock held); how many there were."""
        found = [p for folder in (self.path, self.path / "checkpoints") if folder.is_dir()
                 for p in folder.iterdir() if _TEMPORARY.fullmatch(p.name) and p.is_file()]
        for p in found:
            _unlink(p)
        return len(found)

    # Plain files ---------------------------------------------------------------

    def write_spec(self, text: str) -> None:
        with _writing(self.spec, "the spec"):
            atomic_write_text(self.spec, text)

    def write_config(self, config: Mapping[str, Any]) -> None:
        with _writing(self.config, "the run's config"):
            atomic_write_text(self.config, json.dumps(config, indent=2, default=str) + "\n")

    def read_config(self) -> dict[str, Any]:
        """config.json, every field checked (see archdsl/schema.py)."""
        path = self.config
        _check_file(path, "the run's config (JSON)")
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ArchError(f"expected a run's config (a few kB of JSON), found {show_bytes(size)}", where=str(path),
                            notes=(DAMAGED_CONFIG,))
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested thousands deep
            raise ArchError(f"cannot read the run's config: {e}", where=str(path),
                            notes=(DAMAGED_CONFIG,)) from None
        validate(config, CONFIG, path, DAMAGED_CONFIG)
        return config

    def write_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rewrite metrics.jsonl whole (on resume: the checkpoint's history is the truth)."""
        with _writing(self.metrics, "the metrics"):
            atomic_write_text(self.metrics, "".join(json.dumps(dict(r)) + "\n" for r in rows))

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Add one epoch's line; a failed write is cut off again, so the file never ends in half a line."""
        line = (json.dumps(dict(row)) + "\n").encode("utf-8")
        with _writing(self.metrics, "the metrics"), open(self.metrics, "ab") as f:
            size = f.tell()
            try:
                f.write(line)
                f.flush()
            except OSError:
                f.truncate(size)
                raise

    def write_curves(self, rows: list[Mapping[str, Any]], epochs: int, title: str = "") -> bool:
        """curves.png, redrawn during a run so it can be watched.

        Without matplotlib (a bare GPU box, say), or where the PNG cannot be written (a folder in
        its place), there is no PNG and training goes on: returns False; metrics.jsonl holds the
        same numbers. A full disk is told by the checkpoint written next.
        """
        try:
            fig = plot_curves(rows, epochs, title)
            with _writing(self.curves, "the curves"):
                _atomic_write(self.curves, lambda f: fig.savefig(f, format="png", dpi=100))
        except (ImportError, ArchError):
            return False
        return True

    # Checkpoints -------------------------------------------------------------

    def save_checkpoint(self, state: Mapping[str, Any], which: str = "last") -> Path:
        path = self.checkpoint(which)
        with _writing(path.parent, "the checkpoints folder"):
            path.parent.mkdir(exist_ok=True)
        with _writing(path, "the checkpoint"):
            atomic_save(dict(state), path)
        return path

    def link_best(self) -> None:
        """best.pt := last.pt, when the last epoch is the best: a hard link (no second copy on the disk).

        Where the file system has no hard links, a copy; either way renamed into place, so best.pt is whole.
        """
        last, best = self.checkpoint("last"), self.checkpoint("best")
        tmp = _temporary(best)
        with _writing(best, "the best checkpoint"):
            try:
                os.link(last, tmp)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                    raise
                with open(last, "rb") as src:
                    _atomic_write(best, lambda f: shutil.copyfileobj(src, f, 1 << 20))
                return
            try:
                os.replace(tmp, best)
            finally:
                _unlink(tmp)
        _fsync_dir(best.parent)

    def save_weights(self, state_dict: Mapping[str, Any]) -> None:
        with _writing(self.weights, "the final weights"):
            atomic_save(dict(state_dict), self.weights)

    def remove_weights(self) -> None:
        """Remove model.pt: a resumed run that goes on no longer has final weights (until it finishes)."""
        with _writing(self.weights, "the final weights (removing the old ones)"):
            self.weights.unlink(missing_ok=True)

    def load_checkpoint(self, which: str = "last", map_location: str | torch.device = "cpu") -> dict[str, Any]:
        path = self.checkpoint(which)
        if path.parent.exists() and not path.parent.is_dir():
            raise ArchError("expected the checkpoints folder here, found a file", where=str(path.parent),
                            notes=("move it away; then restore the folder from a copy, or start a new run",))
        if not path.exists():
            if which == "best":
                raise ArchError("no best checkpoint in this run (the run stopped before its first epoch ended; "
                                "resume it to train)", where=str(path))
            raise ArchError("no last checkpoint in this run, so there is nothing to resume", where=str(path),
                            notes=("a run stopped before its first checkpoint: run the same command again "
                                   "(--out takes back a directory that holds only spec.arch and config.json)",))
        return load_checkpoint(path, map_location)


DAMAGED_CONFIG = ("this run's config.json is damaged: restore it from a copy, or start a new run "
                  "(the checkpoints hold the weights)")
DAMAGED_CHECKPOINT = ("this checkpoint is damaged: restore it from a copy, or start a new run; when last.pt is the "
                      "damaged one, checkpoints/best.pt may be copied over it (losing the epochs since)")


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by `RunDir.save_checkpoint`, every field checked.

    Loaded with weights_only=True (no code runs); onto the CPU, memory-mapped (the tensors are
    read when used).
    """
    path = Path(path)
    _check_file(path, "a checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip: anything else is cut short, or not a checkpoint
        size = path.stat().st_size if path.exists() else 0
        raise ArchError(f"cannot load this checkpoint: not a torch.save file ({size:,} bytes; cut short, or "
                        f"something else)", where=str(path), notes=(DAMAGED_CHECKPOINT,))
    try:
        state = torch.load(path, map_location=map_location, weights_only=True,
                           mmap=torch.device(map_location).type == "cpu")
    except Exception as e:  # truncated, not a checkpoint, or holding objects weights_only refuses
        reason = " ".join(str(e).split())[:300]
        raise ArchError(f"cannot load this checkpoint: {type(e).__name__}: {reason}", where=str(path),
                        notes=(DAMAGED_CHECKPOINT,)) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ArchError("not an archdsl checkpoint (or one from another version)", where=str(path))
    validate(state, CHECKPOINT, path, DAMAGED_CHECKPOINT)
    epochs = [r["epoch"] for r in state["history"]]
    if epochs != list(range(1, state["epoch"] + 1)):
        raise ArchError(f"history: expected one record for each epoch 1 to {state['epoch']}, got epochs "
                        f"{epochs[:5]}{'...' if len(epochs) > 5 else ''}", where=str(path), notes=(DAMAGED_CHECKPOINT,))
    return state


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`.

    A crash or Ctrl-C at any point leaves either the old file or the new one, never a torn one.
    """
    _atomic_write(path, lambda f: torch.save(obj, f))
    _fsync_dir(Path(path).parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


class _Sink:
    """A file whose write errors are remembered: torch.save reports a full disk as 'unexpected pos 2304 vs 2198'."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[Any], object]) -> None:
    """write(file) into a temporary file beside `path`, fsync, then rename it over `path`.

    On any failure the temporary file is removed and `path` is as it was; a failed write is
    raised as the OSError it was (a full disk, no permission), even where the writer hid it.
    """
    path = Path(path)
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                write(sink)
            except Exception as e:
                if sink.error is not None and not isinstance(e, OSError):
                    raise sink.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _unlink(tmp)


@contextlib.contextmanager
def _writing(path: Path, what: str) -> Iterator[None]:
    """An OSError inside becomes the RunWriteError that names `path` and says what the reason means."""
    try:
        yield
    except OSError as e:
        raise _write_error(path, e, what) from None


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # cleaning up after a failure must not hide the failure
        pass


def _write_error(path: Path, e: OSError, what: str) -> RunWriteError:
    """The one message for a failed write: which file, why, and what the reason means."""
    reason = e.strerror or str(e) or type(e).__name__
    notes = []
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        notes.append(f"the disk is full{_free(path)}: free some space")
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        notes.append(f"archdsl may not write in {path.parent}: choose a directory you can write to")
    elif e.errno in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ENOTEMPTY):
        notes.append(f"something is in the way of {path} (a directory where a file goes?): move it away")
    return RunWriteError(f"cannot write {what}: {reason}", where=str(path), notes=tuple(notes))


def _free(path: Path) -> str:
    for folder in (path.parent, *path.parents):
        try:
            return f" ({show_bytes(shutil.disk_usage(folder).free)} free there)"
        except OSError:
            continue
    return ""


def _check_file(path: Path, what: str) -> None:
    if path.exists() and not path.is_file():
        raise ArchError(f"expected {what} here, found {'a directory' if path.is_dir() else 'something not a file'}",
                        where=str(path), notes=("move it away; then restore the file from a copy, or start a new run",))


def _mkdir(path: Path) -> tuple[Path, ...]:
    """mkdir -p; the folders it made, deepest first (so a failed setup can remove them again)."""
    made, p = [], path
    while not p.exists() and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(path, e, "the run directory") from None
    return tuple(made)


def _taken(path: Path) -> ArchError:
    if not path.is_dir():
        return ArchError(f"--out {path} is a file; choose a new directory", where=str(path))
    what = "a run" if (path / "config.json").exists() else "files"
    fix = f"continue it with --resume {path}, or " if what == "a run" else ""
    return ArchError(f"--out {path} already holds {what}; {fix}choose a new directory", where=str(path))


def _leftovers(path: Path) -> list[Path] | None:
    """What `path` holds if it may become a new run: nothing, or what a run leaves before its first
    checkpoint (spec.arch, config.json, temporary files, a stale .lock); None when it holds anything else."""
    if not path.exists():
        return []
    if not path.is_dir():
        return None
    found = []
    for p in path.iterdir():
        if p.name == LOCK_NAME or _TEMPORARY.fullmatch(p.name):
            found.append(p)
        elif p.name in ("spec.arch", "config.json") and p.is_file():
            found.append(p)
        elif p.name == "checkpoints" and p.is_dir() and all(_TEMPORARY.fullmatch(q.name) for q in p.iterdir()):
            found.append(p)
        else:
            return None
    return [p for p in found if p.name != LOCK_NAME]


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
