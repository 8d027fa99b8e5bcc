"""How long `archdsl.trace` takes next to `torchinfo.summary` on the same model, and on every spec.

    python benchmarks/bench_trace.py [--repeat 5]

Prints two tables of median in-process times: VGG-11 beside torchinfo, then every spec
in specs/ against the target of 200 ms a trace. archdsl traces on the meta device, so its
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

SPECS = Path(__file__).resolve().parent.parent / "specs"
VGG = SPECS / "vgg.arch"
TARGET_MS = 200  # a spec traces in under this, in process


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

    print(f"median of {args.repeat} runs, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print_table(("model", "params", "archdsl.trace", "torchinfo.summary (CPU)", "torchinfo.summary (meta)"), rows)

    rows = []
    for spec in sorted(SPECS.rglob("*.arch")):
        summary = archdsl.trace(spec)
        ms = median_seconds(lambda: archdsl.trace(spec), args.repeat) * 1e3
        rows.append((str(spec.relative_to(SPECS)), f"{summary.total_params:,}", f"{len(summary):,}", f"{ms:,.1f} ms",
                     "ok" if ms < TARGET_MS else "SLOW"))
    print()
    print_table(("spec", "params", "rows", "archdsl.trace", f"< {TARGET_MS} ms"), rows)


def print_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
