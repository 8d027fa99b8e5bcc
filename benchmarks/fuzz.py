"""The long mode of tests/test_fuzz.py: generate cases for minutes, print what broke the promise.

    python benchmarks/fuzz.py --minutes 10 [--workers 2] [--seed N] [--families grammar,odd,...]

The promise: any spec text, any include, any flag value of `archdsl shapes` gives a result
or an `archdsl.ArchError` (exit code 2), never another exception, never a hang (--timeout,
8 CPU seconds a case), never more than --memory-mb (1024) of memory, and every error's excerpt shows
the line its `file:line:col` names. Cases come from the generators in tests/test_fuzz.py
(the whole grammar, mutations of the specs, deep nesting, huge numbers, odd characters,
includes, the CLI's flags, the API's arguments), each run in a worker process.

Prints a table per generator family (cases, results, errors, crashes by kind, hangs,
memory, misplaced excerpts, garbled reports, the longest case and the largest memory
growth), then each class of failure (a crash by exception type and the archdsl function
it came from; a hang by generator; a misplaced excerpt by what is wrong) with a reproducer,
shrunk while it still fails the same way. Exits 1 if any case broke the promise.
`--library DIR` fuzzes the archdsl package found in DIR (a checkout of another commit).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_fuzz as fz  # noqa: E402  (the generators, the checks and the worker pool)

WEIGHTS = {"grammar": 4, "mutate": 3, "odd": 3, "huge": 2, "deep": 1, "include": 2, "cli": 2, "api": 1}
COLUMNS = ["cases", "ok", "errors", "crashes", "hangs", "memory", "misplaced", "garbled", "skipped",
           "max s", "max cpu s", "max MB"]
TIMES = ("max s", "max cpu s")


class Tally:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, float]] = {}
        self.classes: dict[str, dict] = {}  # class -> count, families, shortest case, its detail
        self.hangs: dict[str, int] = {}
        self.slowest: tuple[float, dict | None] = (0.0, None)

    def add(self, family: str, c: dict, r: dict) -> None:
        row = self.rows.setdefault(family, dict.fromkeys(COLUMNS, 0))
        row["cases"] += 1
        o = r["outcome"]
        key = {"ok": "ok", "error": "errors", "crash": "crashes", "hang": "hangs", "memory": "memory",
               "skipped": "skipped"}[o]
        row[key] += 1
        if o in ("hang", "memory"):
            self.hangs[c["gen"]] = self.hangs.get(c["gen"], 0) + 1
        if o in ("ok", "error", "crash"):
            row["max s"] = max(row["max s"], r.get("time", 0))
            row["max cpu s"] = max(row["max cpu s"], r.get("cpu", 0))
            if r.get("time", 0) > self.slowest[0]:
                self.slowest = (r["time"], c)
        row["max MB"] = max(row["max MB"], r.get("mem_mb", 0))
        failures = fz.failures_of(c, r)
        if o != "memory" and r.get("mem_mb", 0) > fz.MEMORY_MB:
            row["memory"] += 1
        kinds = {fz.kind_of(cls) for cls, _ in failures}
        for k in ("misplaced", "garbled"):
            row[k] += k in kinds
        for cls, detail in failures:
            entry = self.classes.setdefault(cls, {"count": 0, "families": set(), "case": c, "detail": detail})
            entry["count"] += 1
            entry["families"].add(c["gen"])
            if fz.size_of(c) < fz.size_of(entry["case"]):
                entry["case"], entry["detail"] = c, detail


def table(rows: dict[str, dict[str, float]]) -> str:
    total = dict.fromkeys(COLUMNS, 0)
    for row in rows.values():
        for k in COLUMNS:
            total[k] = max(total[k], row[k]) if k in TIMES + ("max MB",) else total[k] + row[k]
    out = [f"{'family':<10}" + "".join(f"{k:>10}" for k in COLUMNS)]
    out.append("-" * len(out[0]))
    for name, row in [*sorted(rows.items()), ("total", total)]:
        if name == "total":
            out.append("-" * len(out[0]))
        cells = [f"{row[k]:>10.2f}" if k in TIMES else f"{row[k]:>10.0f}" if k == "max MB" else f"{int(row[k]):>10,}"
                 for k in COLUMNS]
        out.append(f"{name:<10}" + "".join(cells))
    return "\n".join(out)


# Shrinking a reproducer -------------------------------------------------------------

def _ddmin(parts: list[str], still: Callable[[list[str]], bool], time_left: Callable[[], bool]) -> list[str]:
    """Delta debugging: drop chunks of `parts` while the failure stays."""
    n = 2
    while len(parts) >= 2 and time_left():
        chunk = -(-len(parts) // n)
        for i in range(0, len(parts), chunk):
            cand = parts[:i] + parts[i + chunk:]
            if not time_left():
                return parts
            if still(cand):
                parts, n = cand, max(n - 1, 2)
                break
        else:
            if n >= len(parts):
                return parts
            n = min(len(parts), n * 2)
    return parts


def _shrink_text(text: str, still: Callable[[str], bool], time_left: Callable[[], bool]) -> str:
    for split in (lambda s: re.split(r"(?<=\n)", s),  # lines (only \n ends one: odd line breaks stay inside)
                  lambda s: re.findall(r"\w+|\s+|.", s, re.S),  # words and single characters
                  list):  # characters
        parts = [p for p in split(text) if p]
        text = "".join(_ddmin(parts, lambda ps: still("".join(ps)), time_left))
    return text


def shrink(worker: fz.Worker, c: dict, cls: str, seconds: float) -> dict:
    """A smaller case that still fails as `cls`, found within `seconds`."""
    deadline = time.monotonic() + seconds

    def time_left() -> bool:
        return time.monotonic() < deadline

    def fails(cand: dict) -> bool:
        return any(k == cls for k, _ in fz.failures_of(cand, worker.run(cand)))

    if not fails(c):
        return c  # not reproducible on its own (it needed a state the worker was in)
    c = dict(c)
    if c["spec"] not in c.get("files", {}):
        c["spec"] = _shrink_text(c["spec"], lambda s: fails({**c, "spec": s}), time_left)
    for name, what in list(c.get("files", {}).items()):
        if "text" in what:
            files = dict(c["files"])
            small = _shrink_text(what["text"], lambda s: fails({**c, "files": {**files, name: {"text": s}}}), time_left)
            c["files"] = {**files, name: {"text": small}}
    if c.get("args"):
        pairs = [c["args"][i:i + 2] for i in range(0, len(c["args"]), 2)]
        pairs = _ddmin(pairs, lambda ps: fails({**c, "args": [a for p in ps for a in p]}), time_left) if len(
            pairs) > 1 else pairs
        c["args"] = [a for p in pairs for a in p]
    for key in ("params", "input_shape", "batch"):
        if key in c and time_left():
            cand = {k: v for k, v in c.items() if k != key}
            if fails(cand):
                c = cand
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to generate cases (default 10)")
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--seed", type=int, default=None, help="seed of the generators (default: from the clock)")
    ap.add_argument("--families", default=",".join(WEIGHTS), help=f"comma-separated, of {', '.join(WEIGHTS)}")
    ap.add_argument("--timeout", type=float, default=fz.TIMEOUT_S,
                    help="CPU seconds a case may take (default 5; on the clock, 3 times that)")
    ap.add_argument("--memory-mb", type=float, default=fz.MEMORY_MB, help="memory a case may grow by (default 1024)")
    ap.add_argument("--max-cases", type=int, default=None, help="stop after this many cases")
    ap.add_argument("--max-hangs", type=int, default=3,
                    help="after this many hangs of one generator variant, skip its cases (each costs seconds)")
    ap.add_argument("--shrink-seconds", type=float, default=20.0, help="time to shrink each class's reproducer")
    ap.add_argument("--no-corpus", action="store_true", help="leave out the named cases of test_fuzz.corpus()")
    ap.add_argument("--library", default=None, help="fuzz the archdsl package in this directory")
    ap.add_argument("--log-dir", default=None, help="keep the workers' stderr here")
    args = ap.parse_args(argv)

    if args.library:
        os.environ["PYTHONPATH"] = str(Path(args.library).resolve()) + os.pathsep + os.environ.get("PYTHONPATH", "")
    fz.MEMORY_MB = args.memory_mb
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in fz.GENERATORS]
    if unknown:
        ap.error(f"unknown families {unknown}; known: {', '.join(fz.GENERATORS)}")
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    rng = random.Random(seed)
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="archdsl-fuzz-logs-")
    print(f"seed {seed}; {args.workers} workers; {args.timeout:g} CPU s and {args.memory_mb:g} MB a case; "
          f"families {', '.join(families)}; worker logs in {log_dir}", flush=True)

    t_start = time.monotonic()
    pool = fz.Pool(args.workers, args.timeout, args.memory_mb, log_dir)
    print(f"workers started in {time.monotonic() - t_start:.1f} s; archdsl from {pool.workers[0].library}", flush=True)
    tally = Tally()
    deadline = time.monotonic() + args.minutes * 60
    weights = [WEIGHTS.get(f, 1) for f in families]
    done = 0
    last_print = time.monotonic()

    def skip(c: dict) -> bool:
        return time.monotonic() > deadline or tally.hangs.get(c["gen"], 0) >= args.max_hangs

    def record(c: dict, r: dict) -> None:
        tally.add(c["gen"].split(":")[0], c, r)

    try:
        if not args.no_corpus:
            pool.run(fz.corpus(), done=record)
        while time.monotonic() < deadline and (args.max_cases is None or done < args.max_cases):
            batch = []
            for _ in range(20 * args.workers):
                family = rng.choices(families, weights)[0]
                batch.append(fz.GENERATORS[family](rng))
            pool.run(batch, skip=skip, done=record)
            done += len(batch)
            if time.monotonic() - last_print > 60:
                last_print = time.monotonic()
                n = sum(r["cases"] for r in tally.rows.values())
                print(f"  {(last_print - t_start) / 60:.1f} min: {n:,} cases, {len(tally.classes)} classes of failure",
                      flush=True)
    except KeyboardInterrupt:
        print("interrupted; the table so far:")
    elapsed = time.monotonic() - t_start

    print()
    print(table(tally.rows))
    slow_t, slow_c = tally.slowest
    if slow_c is not None:
        print(f"\nslowest case that finished: {slow_t:.2f} s: {fz._short(fz.show_case(slow_c), 300)}")
    n_cases = sum(r["cases"] for r in tally.rows.values())
    print(f"{n_cases:,} cases in {elapsed / 60:.1f} min (seed {seed})")

    if tally.classes:
        print(f"\n{len(tally.classes)} classes of failure:")
        worker = pool.workers[0]
        for cls, entry in sorted(tally.classes.items(), key=lambda kv: (fz.kind_of(kv[0]), -kv[1]["count"])):
            c = entry["case"]
            detail = entry["detail"]
            if fz.kind_of(cls) in ("crash", "misplaced", "garbled") and args.shrink_seconds > 0:
                small = shrink(worker, c, cls, args.shrink_seconds)
                if small is not c:
                    again = [d for k, d in fz.failures_of(small, worker.run(small)) if k == cls]
                    if again:
                        c, detail = small, again[0]
            print(f"\n[{entry['count']}x] {cls}    (from {', '.join(sorted(entry['families']))[:200]})")
            print(f"    reproducer: {fz._short(fz.show_case(c), 1200)}")
            for line in detail.splitlines():
                print(f"    {line}")
    else:
        print("\nno case broke the promise")
    pool.close()
    return 1 if tally.classes else 0


if __name__ == "__main__":
    sys.exit(main())
