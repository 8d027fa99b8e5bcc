"""How long `archdsl.trace` takes next to `torchinfo.summary` on the same model.

    python benchmarks/bench_trace.py [--repeat 5]

Prints a table of median in-process times. archdsl traces on the meta device, so its
time does not grow with the input size; torchinfo runs a real forward pass, which at
4096x4096 needs the model built for real (VGG-11's first linear layer alone then holds
34 G weights, 128 GiB): that row is reported, not run. For a like-for-like figure,
torchinfo is also timed on the meta-built model (which needs archdsl to build it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torchinfo

import archdsl
from archdsl.api import plan
from archdsl.tracer import trace_plan

VGG = Path(__file__).resolve().parent.parent / "specs" / "vgg.arch"


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: imports, lark tables, torch dispatch caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    rows = []
    for size in (224, 4096):
        shape = (1, size, size)
        ours = median_seconds(lambda: archdsl.trace(VGG, input_shape=shape), args.repeat)
        params = archdsl.trace(VGG, input_shape=shape).total_params
        if size == 224:
            net = archdsl.build(VGG)
            real = median_seconds(lambda: torchinfo.summary(net, input_size=(1, *shape), verbose=0), args.repeat)
            real_cell = f"{real * 1e3:,.1f} ms"
        else:
            real_cell = f"not run: {params * 4 / 2**30:,.0f} GiB of weights"
        meta_net, _ = trace_plan(plan(VGG, input_shape=shape))
        meta = median_seconds(lambda: torchinfo.summary(meta_net, input_size=(1, *shape), device="meta", verbose=0),
                              args.repeat)
        rows.append((f"VGG-11 1x{size}x{size}", f"{params:,}", f"{ours * 1e3:,.1f} ms", real_cell, f"{meta * 1e3:,.1f} ms"))

    head = ("model", "params", "archdsl.trace", "torchinfo.summary (CPU)", "torchinfo.summary (meta)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print(f"median of {args.repeat} runs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
