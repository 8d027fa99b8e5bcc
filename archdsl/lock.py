"""One writer per run directory: an advisory lock on RUN/.lock, held while a process writes the run.

Two `--resume`s of one run would both train, and every epoch would then appear twice in
metrics.jsonl. The lock is an `flock` on a file that names its holder (PID and host), so the
second writer is refused with the first one's PID. The kernel drops an flock when its process
dies, even by `kill -9`, so a crash never leaves a run locked; a `.lock` file left behind is
harmless. On a platform without `fcntl` (Windows) there is no lock.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from .errors import ArchError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunLock:
    """The lock of one run directory; `acquire` raises ArchError naming the holder when another process has it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None or self.fd is not None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise ArchError(f"another process ({holder}) is writing this run directory",
                                where=str(self.path.parent),
                                notes=(f"wait for it to finish, or stop it (kill {holder.split()[1]}: it keeps its "
                                       "last finished epoch), then resume"
                                       if holder.startswith("PID ") else "wait for it to finish, then resume",))
            except BaseException:
                os.close(fd)
                raise
            try:  # a holder that was releasing may have removed the file we opened: lock the one at the path
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file, then let go: a process waiting on the old file sees it gone and tries again."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # a read-only or vanished directory: the lock goes with the descriptor anyway
            pass
        os.close(self.fd)
        self.fd = None


def _holder(fd: int) -> str:
    """'PID 1234' (with ' on HOST' when it is another machine), from the lock file; 'another process' if unreadable."""
    try:
        words = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        words = []
    if not words or not words[0].isdigit():
        return "its PID is not recorded yet"
    host = f" on {words[1]}" if len(words) > 1 and words[1] != socket.gethostname() else ""
    return f"PID {words[0]}{host}"
