"""kill -9 at random points of training runs, then `--resume`: does every run end as if never killed?

    python benchmarks/kill_resume.py                  # 20 runs, one kill each (about 3 minutes on 2 cores)
    python benchmarks/kill_resume.py --runs 5 --seed 1

Each run is `archdsl train` in a process of its own (synthetic data, a 3 MB checkpoint per epoch,
dropout, so the RNG state matters), killed with SIGKILL at a random moment: a random time (0 to
1.5 epochs) after the line of a random epoch, so inside an epoch, inside its writes, or after the
last one, while model.pt and the curves are written. Then the run is resumed (in this
process) and compared with an uninterrupted run of the same command. Printed per run: when it
was killed, what the kill left (the epoch in last.pt, temporary files, best.pt behind last.pt,
model.pt missing), and after the resume whether the final weights are bit for bit the
uninterrupted run's, and whether anything is left over (temporary files, the lock file) or
inconsistent (best.pt not the best epoch, model.pt not last.pt's weights, metrics.jsonl rows).
Every process runs on one thread, so that the numbers are comparable bit for bit. This is a
benchmark for a longer look than tests/test_faults.py takes; it asserts nothing, and exits 1 if
a run did not end as the uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import archdsl  # noqa: E402
from archdsl.errors import ArchError  # noqa: E402
from archdsl.runs import load_checkpoint  # noqa: E402

SPEC = "input 1x28x28\nflatten linear(1024) relu dropout(0.2) linear(10)\n"  # 800k params: 3.2 MB checkpoints
FLAGS = ["--dataset", "synthetic", "--limit", "64", "--batch-size", "32", "--lr", "0.1", "--no-tune", "--seed", "3"]


def start(folder: Path, out: Path, epochs: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "ARCHDSL_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "archdsl", "train", "spec.arch", *FLAGS, "--epochs", str(epochs),
                             "--out", str(out)], cwd=folder, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def epoch_lines(proc: subprocess.Popen, last: int | None = None) -> list[float]:
    """Read the epoch lines up to epoch `last` (the first when None); the times they came."""
    times = []
    for line in proc.stdout:
        if line.startswith("epoch "):
            times.append(time.monotonic())
            if last is None or re.match(rf"epoch +{last}/", line):
                break
    return times


def left_by_the_kill(run: Path) -> dict[str, str]:
    """What the kill left, before any resume touches it."""
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    tmp = [p for p in run.rglob(".*.tmp")]
    state = load_checkpoint(last) if last.is_file() else None
    behind = "-"
    if state is not None and state["history"]:
        top = max(state["history"], key=lambda r: r["test_acc"])["epoch"]
        have = load_checkpoint(best)["epoch"] if best.is_file() else None
        behind = "ok" if have == top else f"behind ({have} < {top})" if have else "missing"
    return {"last.pt": str(state["epoch"]) if state else "none",
            ".tmp left": f"{len(tmp)} ({sum(p.stat().st_size for p in tmp) / 2**20:.1f} MB)" if tmp else "0",
            "best.pt": behind, "model.pt": "yes" if (run / "model.pt").is_file() else "no"}


def check(run: Path, whole: dict[str, torch.Tensor]) -> dict[str, str]:
    """After the resume: the same weights as the uninterrupted run, and nothing left over or inconsistent."""
    problems = []
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    top = max(last["history"], key=lambda r: r["test_acc"])["epoch"]
    if load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] != top:
        problems.append("best.pt")
    weights = torch.load(run / "model.pt", weights_only=True)
    if not all(torch.equal(weights[k], last["model"][k]) for k in weights):
        problems.append("model.pt != last.pt")
    rows = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    if rows != list(range(1, last["epoch"] + 1)):
        problems.append("metrics.jsonl")
    left = [p.name for p in run.rglob(".*")]
    same = weights.keys() == whole.keys() and all(torch.equal(weights[k], whole[k]) for k in whole)
    return {"same weights": "yes" if same else "NO", "left over": ", ".join(left) or "none",
            "inconsistent": ", ".join(problems) or "none"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="seed for the kill times")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(folder / "cache")
        (folder / "spec.arch").write_text(SPEC)
        proc = start(folder, folder / "whole", args.epochs)  # the uninterrupted run, timed as the kills will be
        times = epoch_lines(proc, args.epochs)
        proc.communicate()
        epoch = (times[-1] - times[0]) / (args.epochs - 1)
        whole = torch.load(folder / "whole" / "model.pt", weights_only=True)
        print(f"{args.runs} runs of {args.epochs} epochs ({epoch * 1000:.0f} ms an epoch, its checkpoint "
              f"included); each is killed at a random moment: after the line of a random epoch E, a random "
              f"0 to 1.5 epochs' time later (so after the end too, when E is the last)\n")
        rows, failed = [], 0
        for i in range(1, args.runs + 1):
            run = folder / f"run{i}"
            proc = start(folder, run, args.epochs)
            after, t = rng.randint(1, args.epochs), rng.uniform(0, 1.5 * epoch)
            epoch_lines(proc, after)
            time.sleep(t)
            proc.kill()
            proc.wait()
            row = {"run": str(i), "killed": f"epoch {after} + {t * 1000:.0f} ms", **left_by_the_kill(run)}
            try:
                archdsl.train(resume=run, progress=False)
                row["resume"] = "trained on" if row["last.pt"] != str(args.epochs) else "completed outputs"
            except ArchError as e:
                row["resume"] = "already done" if "already trained" in e.message else f"error: {e.message[:40]}"
            row.update(check(run, whole))
            failed += row["same weights"] != "yes" or row["left over"] != "none" or row["inconsistent"] != "none"
            rows.append(row)
            print(f"  run {i}: killed {row['killed']}, last.pt {row['last.pt']}, resume: {row['resume']}",
                  file=sys.stderr)
        cols = list(rows[0])
        width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
        print("  ".join(c.ljust(width[c]) for c in cols))
        for r in rows:
            print("  ".join(r[c].ljust(width[c]) for c in cols))
        print(f"\n{args.runs - failed} of {args.runs} runs ended with the uninterrupted run's weights and nothing "
              f"left over or inconsistent")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
