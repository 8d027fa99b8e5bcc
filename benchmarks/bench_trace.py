"""archdsl's shape table beside torchinfo's, on every spec in specs/: time, params, mult-adds, memory.

    python benchmarks/bench_trace.py [--repeat 5] [--batch 2] [--no-measure]

One table, a row per spec:
- the median in-process time of `archdsl.trace` and of `torchinfo.summary` on the same model
  (torchinfo on the meta-built model, as archdsl traces, so neither allocates weights);
- whether the two agree on total params and on mult-adds (where they differ, archdsl's count is
  the one measures.py explains: torchinfo counts a linear layer on a sequence once per example,
  and no attention);
- the estimated peak memory of one training step on the CPU (float32, SGD, at --batch) against
  the allocator's measured peak of a real step (tests/test_stepmemory.py's measurement), and
  their ratio. --no-measure skips the real steps, which take most of the time.

Then the largest spec at a second size, 4096x4096, where torchinfo's real forward would need the
weights (VGG-11's first linear layer alone holds 34 G of them) and archdsl's trace costs the same.
This is a benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torchinfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import archdsl  # noqa: E402
from archdsl.api import plan  # noqa: E402
from archdsl.memory import show_bytes  # noqa: E402
from archdsl.stepmemory import estimate_step  # noqa: E402
from archdsl.tracer import materialize, trace_plan  # noqa: E402
from test_stepmemory import measured_peak  # noqa: E402

SPECS = ROOT / "specs"
VGG = SPECS / "vgg.arch"


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: imports, lark tables, torch dispatch caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def row(spec: Path, repeat: int, batch: int, measure: bool) -> tuple[str, ...]:
    summary = archdsl.trace(spec)
    ours = median_seconds(lambda: archdsl.trace(spec), repeat)
    net, _ = trace_plan(plan(spec))
    shape = summary.input_shape
    theirs_s = median_seconds(lambda: torchinfo.summary(net, input_size=shape, device="meta", verbose=0), repeat)
    theirs = torchinfo.summary(net, input_size=shape, device="meta", verbose=0)
    same_params = "equal" if theirs.total_params == summary.total_params else f"{theirs.total_params:,}"
    macs = "equal" if theirs.total_mult_adds == summary.total_mult_adds else \
        f"{summary.total_mult_adds / 1e9:.2f} G vs {theirs.total_mult_adds / 1e9:.2f} G"
    estimate = estimate_step(net, (batch, *shape[1:])).peak
    if measure:
        real = measured_peak(materialize(trace_plan(plan(spec))[0]), (batch, *shape[1:]))
        measured, ratio = show_bytes(real), f"{estimate / real:.3f}"
    else:
        measured = ratio = "-"
    return (str(spec.relative_to(SPECS)), f"{summary.total_params:,}", f"{ours * 1e3:,.1f} ms",
            f"{theirs_s * 1e3:,.1f} ms", same_params, macs, show_bytes(estimate), measured, ratio)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batch", type=int, default=2, help="batch of the training step estimated and measured")
    ap.add_argument("--no-measure", action="store_true", help="estimate only: no real training steps")
    args = ap.parse_args()

    rows = [row(spec, args.repeat, args.batch, not args.no_measure) for spec in sorted(SPECS.rglob("*.arch"))]
    print(f"median of {args.repeat} runs, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"training step: CPU, float32, SGD, batch {args.batch}\n")
    print_table(("spec", "params", "archdsl.trace", "torchinfo (meta)", "params vs torchinfo",
                 "mult-adds vs torchinfo", "step estimated", "step measured", "ratio"), rows)

    big = (1, 4096, 4096)
    ms = median_seconds(lambda: archdsl.trace(VGG, input_shape=big), args.repeat) * 1e3
    params = archdsl.trace(VGG, input_shape=big).total_params
    print(f"\nVGG-11 at 1x4096x4096: archdsl.trace {ms:,.1f} ms; torchinfo's real forward would need "
          f"{show_bytes(params * 4)} of weights")


def print_table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


if __name__ == "__main__":
    main()
