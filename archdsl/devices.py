"""The device a run trains on: choosing it, preparing it, and the precision it runs in.

`resolve_device` turns --device into a torch.device, or an ArchError that says what there is.
On the CPU, `flush_denormals` and `keep_freed_memory` remove two costs that have nothing to do
with the arithmetic (their docstrings say what they measured). `precision` picks bf16
autocast and channels_last: on by default for CUDA, off elsewhere.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Iterator

import torch
from torch import nn

from .errors import ArchError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps; one that is not there is an ArchError."""
    text = str(name).strip().lower()
    mps_ok = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index_text = text[5:]
        if text != "cuda" and not index_text.isdigit():
            raise ArchError(f"--device {name}: a CUDA device is cuda or cuda:N, such as cuda:0")
        if not torch.cuda.is_available():
            why = "this torch has no CUDA support" if torch.version.cuda is None else "it sees no GPU"
            raise ArchError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__}: "
                            f"{why}); use --device cpu, or --device auto to take what there is")
        count = torch.cuda.device_count()
        index = int(index_text) if index_text else torch.cuda.current_device()
        if index >= count:
            raise ArchError(f"--device {name}: this machine has {count} CUDA device{'s' * (count != 1)} "
                            f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})")
        return torch.device("cuda", index)
    if text == "mps":
        if not mps_ok:
            raise ArchError(f"--device {name}: Apple's MPS is not available on this machine; use --device cpu")
        return torch.device("mps")
    raise ArchError(f"unknown device {str(name)!r}; use auto, cpu, cuda, cuda:N or mps")


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """On the CPU, treat denormal floats as zero for the duration; then put it back.

    Sigmoid networks such as LeNet make many denormals in their first epoch, and each costs about
    a hundred normal multiplies (measured: LeNet's first epoch 18 s -> 4 s on a 2-core CPU, with
    the same accuracy).

    torch has no getter for this process-wide flag; its default, off, is what is restored.
    """
    on = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on:
            torch.set_flush_denormal(False)


_MALLOC_TUNED: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse instead of returning them to the OS.

    PyTorch's CPU allocator frees each step's activations and gradients; glibc unmaps blocks
    above its mmap threshold and trims the heap top, so the next step page-faults the same
    megabytes in again. Raising the thresholds (32 MiB blocks, 1 GiB trim, 256 MiB top pad)
    removes that cost at the price of a process that keeps its peak memory. Process-wide and
    done once; a no-op (False) where the C library has no mallopt (macOS, musl, Windows).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        _MALLOC_TUNED = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL("libc.so.6").mallopt
                M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
                _MALLOC_TUNED = all(mallopt(k, v) == 1 for k, v in (
                    (M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 256 << 20)))
            except (OSError, AttributeError):
                pass
    return _MALLOC_TUNED


def sync(device: torch.device) -> None:
    """Wait for the device's queued work: the one wait at the end of a training phase."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def precision(dev: torch.device, amp: bool | None, channels_last: bool | None,
               shape: tuple[int, ...]) -> tuple[bool, bool]:
    """(bf16 autocast, channels_last) for a run: what was asked, else on for CUDA (channels_last for images)."""
    use_amp = amp if amp is not None else dev.type == "cuda"
    if use_amp and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        use_amp = False  # pre-Ampere GPUs: bf16 would be emulated and slow; stay in fp32
    use_cl = channels_last if channels_last is not None else dev.type == "cuda" and len(shape) == 3
    return use_amp, use_cl


def place(model: nn.Module, dev: torch.device, channels_last: bool) -> None:
    """Move the model to the device, in channels_last memory format when asked."""
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
