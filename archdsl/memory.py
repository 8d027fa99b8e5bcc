"""Whether a run fits the device's memory, estimated from the traced shapes before anything is allocated.

A spec can ask for terabytes (`linear(1000000000)` after a flatten, `input 1x100000x100000`,
`--resize 100000`): torch would fail deep inside its allocator, or the machine would swap for
hours. The trace runs on the meta device, so the estimate costs milliseconds and no memory. It
counts, for a training step:

- the weights and their gradients, 4 bytes each (plain SGD keeps no other state);
- the activations a step keeps for the backward pass: each layer's output at the batch size
  (views such as flatten share their input's memory), 4 bytes an element, 2 with bf16 autocast;
- the batch itself: gathered as uint8, as floats, and resized;
- the data set, held as uint8 (and the synthetic set's floats while it is made).

It is an estimate: the backward pass's gradient buffers and the allocator's rounding add to the
peak, while an activation followed by relu is freed early. Only a run whose estimate is beyond
what the device has free is refused, so the d2l networks at their recipes (AlexNet at 224,
batch 128: about 1 GiB) are never near the line, and a refused run is refused with the bytes it
would need and what to lower.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .errors import ArchError

if TYPE_CHECKING:
    import torch

    from .summary import Row, Summary

# Modules whose output is a view of their input: no memory of their own.
VIEWS = frozenset({"Flatten", "Unflatten", "Permute", "Transpose", "Reshape", "Identity", "Token"})
SYNTHETIC_MAKING = 12  # bytes per element while data.synthetic makes its images: three float tensors at its peak


def show_bytes(n: float) -> str:
    """1536 -> '1.5 KiB': binary units, three significant digits."""
    if n < 1024:
        return f"{n:,.0f} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        n /= 1024
        if n < 1000 or unit == "EiB":
            return f"{n:,.3g} {unit}" if n < 1000 else f"{n:,.0f} {unit}"
    raise AssertionError("unreachable")


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(e[+-]?\d+)?\s*([kmgtp]?)(i?b?)", re.IGNORECASE)
MAX_SIZE = 2 ** 64  # 16 EiB: no memory is larger, and beyond it is a typo


def parse_size(text: str, flag: str = "--fit") -> int:
    """A memory size in bytes: "16GiB", "16 GiB", "512MB", "1.5G", "800M", "1e9" (bytes), "2TiB".

    K, M, G, T and P are powers of 1024 with or without "iB" or "B": "16GB" is 16 GiB. That is how
    memory is sold and shown (JEDEC's units: a "16 GB" GPU has 16384 MiB in nvidia-smi, and torch's
    out-of-memory messages count in GiB), so a user who types 16GB for a 16 GB card gets that card.
    """
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise _bad_size(text, flag)
    number, exponent, prefix, suffix = m.groups()
    if suffix.lower() not in (("", "b", "ib") if prefix else ("", "b")):  # "16 Gi", "16iB"
        raise _bad_size(text, flag)
    value = Decimal(number + (exponent or "")) * 1024 ** ("kmgtp".index(prefix.lower()) + 1 if prefix else 0)
    if not 1 <= value <= MAX_SIZE:
        raise _bad_size(text, flag, "a size is at least one byte and at most 16 EiB")
    return int(value)


def _bad_size(text: str, flag: str, why: str | None = None) -> ArchError:
    return ArchError(f"{flag} takes a memory size such as 16GiB or 512MB; got {text!r}", notes=(why,) if why else ())


@dataclass(frozen=True)
class Need:
    """What a run needs, in bytes, by part; `largest` is the layer with the most parameters (for a spec)."""

    weights: int  # the weights (unless they exist already: a ready module), and gradients when training
    activations: int  # kept for the backward pass (training), or the largest two at once (evaluation)
    batch: int  # one batch of inputs: uint8, float, resized
    data: int  # the data set as uint8
    making: int  # the synthetic set's floats while it is made
    params: int
    batch_size: int
    training: bool
    largest: Row | None = None

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.batch + self.data + self.making

    def on_host(self) -> Need:
        """The part a CUDA run needs in the CPU's memory: the model is built there, the data set read there."""
        return replace(self, weights=self.params * 4, activations=0, batch=0, training=False)

    def on_device(self) -> Need:
        """The part a CUDA run needs on the GPU: all but the synthetic set's making, which is done on the CPU."""
        return replace(self, making=0)


def _prod(xs: Iterable[int]) -> int:
    return math.prod(int(x) for x in xs)


def need(summary: Summary | None, params: int, image_shape: tuple[int, ...], input_shape: tuple[int, ...],
         images: int, batch_size: int, *, amp: bool = False, synthetic: int = 0, training: bool = True) -> Need:
    """The bytes a run needs. `summary` is the spec traced at batch 1 (None for a ready module, whose
    weights exist already: only its gradients are counted); `images` is the data set's size (train + test),
    `synthetic` the number of images data.synthetic makes in one go (0 for a data set read from files)."""
    per_image = _prod(image_shape)
    outputs = []
    largest = None
    if summary is not None:
        for row in summary.rows:
            if row.kind in ("layer", "join") and row.module.split("(")[0] not in VIEWS:
                outputs.append(_prod(row.output_shape))  # batch 1: the elements of one example
            if row.kind == "layer" and (largest is None or row.params > largest.params):
                largest = row
    copies = (2 if training else 1) - (summary is None)
    element = 2 if amp else 4
    kept = sum(outputs) if training else sum(sorted(outputs)[-2:])
    resized = _prod(input_shape) * 4 if tuple(input_shape) != tuple(image_shape) else 0
    return Need(params * 4 * copies, batch_size * kept * element, batch_size * (per_image * 5 + resized),
                images * per_image, synthetic * per_image * SYNTHETIC_MAKING, params, batch_size, training, largest)


def available(device: torch.device) -> tuple[int, str] | None:
    """(bytes free, where that figure comes from) on the device; None when it cannot be known."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return free, f"{device} has"
    found = []
    meminfo = _meminfo_available()
    if meminfo is not None:
        found.append((meminfo, "the machine has"))
    limit = _cgroup_room()
    if limit is not None:
        found.append((limit, "this process's memory limit (cgroup) leaves"))
    if not found:
        try:
            found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the machine has"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def _meminfo_available() -> int | None:
    """Linux's MemAvailable: free memory plus what the page cache would give back."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What a container's memory limit still allows (cgroup v2, then v1); None without a limit."""
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (f"{v1}limit_in_bytes", f"{v1}usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit
                return None
            return max(0, int(text) - int(Path(usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def check(n: Need, device: torch.device, what: str, where: str | None = None, *, module: bool = False) -> None:
    """Refuse a run whose estimate is beyond what the device has free, saying what it needs and what to lower.

    On CUDA both memories are checked: the GPU's, and the CPU's, where a spec's model is built first
    (`module`: a ready module, built already) and the data set is read.
    """
    if device.type != "cuda":
        _check(n, device, what, where)
        return
    import torch

    _check(n.on_device(), device, what, where)
    _check(replace(n.on_host(), weights=0) if module else n.on_host(), torch.device("cpu"), what, where)


def _check(n: Need, device: torch.device, what: str, where: str | None) -> None:
    have = available(device)
    if have is None or n.total <= have[0]:
        return
    free, source = have
    parts = [(n.weights, f"weights{' and gradients' if n.training else ''} of {n.params:,} params"),
             (n.activations, f"activations at batch {n.batch_size:,}"),
             (n.batch, f"one batch of {n.batch_size:,} inputs"),
             (n.data, "the data set as uint8"),
             (n.making, "making the synthetic data set")]
    notes = [f"{show_bytes(b)}: {label}" for b, label in sorted(parts, key=lambda p: -p[0]) if b * 100 >= n.total]
    notes.append(_fix(n, free))
    span = n.largest.span if n.largest is not None and n.weights * 2 > n.total else None
    raise ArchError(f"{what} needs about {show_bytes(n.total)} ({n.total:,} bytes) of memory on {device}, but "
                    f"{source} {show_bytes(free)} free", span, where=None if span else where, notes=tuple(notes))


def _fix(n: Need, free: int) -> str:
    """What to lower, for the part that is most of the need."""
    if n.weights * 2 > n.total:
        if n.largest is not None and n.largest.params * 2 > n.params:
            return f"{n.largest.layer} holds {n.largest.params:,} of the params: make it smaller"
        return "use a smaller network"
    per_example = (n.activations + n.batch) // max(n.batch_size, 1)
    if n.activations + n.batch >= n.data + n.making:
        fits = (free - n.weights - n.data - n.making) // per_example if per_example else 0
        if fits >= 1:
            return f"lower --batch-size to {fits:,} or less, or the input size (--resize, --input)"
        return (f"one example alone needs {show_bytes(per_example)}: lower the input size (--resize, --input or the "
                f"spec's input)")
    return "the data set alone is too large: use smaller images (--input or the spec's input)"
