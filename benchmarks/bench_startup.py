"""How long the `archdsl` command takes to start, as a whole process, next to `import torch`.

    python benchmarks/bench_startup.py [--runs 7] [--before PATH] [--bytecode]

Runs each command --runs times (after one warm-up round), every command once a round so
that all of them meet the same load on a busy machine, and prints one table of medians and
ranges of wall-clock time with the targets, and the median CPU time (user + system), which
other load on the machine sways less:

- `--help`, `layers` and a spec's mistakes (a syntax error, an unknown layer, a missing
  file) need no torch: under 0.5 s each;
- `shapes specs/alexnet.arch` takes at most `python -c "import torch"` + 0.3 s. The same
  table printed by the library, without the command-line layer, is timed beside it.

Commands run as `python -m archdsl` with the checkout first on PYTHONPATH. `--before PATH`
times a second checkout (e.g. `git archive <commit> | tar -x -C PATH`) in the same rounds,
beside this one. By default the environment is taken as it is: where PYTHONDONTWRITEBYTECODE
is set, archdsl's modules are compiled again by every run. `--bytecode` keeps compiled
modules in a private folder, as an installed package has them (its first round compiles
torch there: a minute).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIGHT_TARGET = 0.5  # seconds: a command that needs no torch
TRACE_OVER_TORCH = 0.3  # seconds over `import torch` for `archdsl shapes specs/alexnet.arch`


@dataclass(frozen=True)
class Command:
    label: str
    argv: tuple[str, ...]  # after `python`
    exit_code: int
    archdsl: bool = True  # run once per checkout; False: plain Python, the same for all


COMMANDS = (
    Command("python -c pass", ("-c", "pass"), 0, archdsl=False),
    Command('python -c "import torch"', ("-c", "import torch"), 0, archdsl=False),
    Command("archdsl --help", ("-m", "archdsl", "--help"), 0),
    Command("archdsl layers", ("-m", "archdsl", "layers"), 0),
    Command('archdsl shapes "conv("', ("-m", "archdsl", "shapes", "conv("), 2),
    Command('archdsl shapes "input 4; nosuch(3)"', ("-m", "archdsl", "shapes", "input 4; nosuch(3)"), 2),
    Command("archdsl shapes specs/nosuch.arch", ("-m", "archdsl", "shapes", "specs/nosuch.arch"), 2),
    Command("archdsl shapes specs/alexnet.arch", ("-m", "archdsl", "shapes", "specs/alexnet.arch"), 0),
    # The same table from the library, without the command-line layer (typer): what that layer costs.
    Command("python: print(archdsl.trace(alexnet).table())",
            ("-c", "import archdsl; print(archdsl.trace('specs/alexnet.arch').table())"), 0),
)
TORCH, ALEXNET, LIBRARY = COMMANDS[1], COMMANDS[-2], COMMANDS[-1]


@dataclass
class Times:
    wall: list[float] = field(default_factory=list)  # seconds from spawning the process to its exit
    cpu: list[float] = field(default_factory=list)  # its user + system time: less swayed by other load


def run_once(command: Command, root: Path, env: dict[str, str], times: Times | None) -> None:
    """Run the command once, adding its times to `times`; a wrong exit code stops the benchmark."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run([sys.executable, *command.argv], cwd=root, env={**env, "PYTHONPATH": str(root)},
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != command.exit_code:
        sys.exit(f"{command.label} in {root} exited {done.returncode}, not {command.exit_code}:\n"
                 f"{done.stderr.decode(errors='replace')[-2000:]}")
    if times is not None:
        times.wall.append(wall)
        times.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def measure(trees: dict[str, Path], runs: int, env: dict[str, str]) -> dict[tuple[str, str], Times]:
    """Times of every (command, tree) pair; plain Python commands are timed once a round, under ''."""
    pairs = [(c, name, root) for c in COMMANDS for name, root in (trees.items() if c.archdsl else [("", ROOT)])]
    times = {(c.label, name): Times() for c, name, _ in pairs}
    for round_ in range(runs + 1):
        for c, name, root in pairs:  # round 0 warms the page cache (and, with --bytecode, compiles)
            run_once(c, root, env, times[c.label, name] if round_ else None)
        print(f"round {round_}/{runs} done", file=sys.stderr)
    return times


def target(command: Command, torch_median: float) -> float | None:
    if command is ALEXNET:
        return torch_median + TRACE_OVER_TORCH
    return LIGHT_TARGET if command.archdsl and command is not LIBRARY else None


def table(times: dict[tuple[str, str], Times], trees: dict[str, Path]) -> str:
    med = statistics.median
    torch_wall, torch_cpu = med(times[TORCH.label, ""].wall), med(times[TORCH.label, ""].cpu)
    head = (f"{'command':38} {'tree':7} {'median':>8} {'range':>13}  {'target':>9}  {'met':3}  {'cpu median':>10}")
    lines = [head, "-" * len(head)]
    for c in COMMANDS:
        limit = target(c, torch_wall)
        for name in (trees if c.archdsl else [""]):
            t = times[c.label, name]
            met = "" if limit is None else ("yes" if med(t.wall) <= limit else "NO")
            shown = "" if limit is None else f"{'<=' if c is ALEXNET else '<'} {limit:.2f} s"
            lines.append(f"{c.label:38} {name:7} {med(t.wall):6.2f} s {min(t.wall):5.2f}-{max(t.wall):5.2f} s"
                         f"  {shown:>9}  {met:3}  {med(t.cpu):8.2f} s")
    lines.append("-" * len(head))
    torch_times = times[TORCH.label, ""]
    for name in trees:
        for label, c in (("archdsl shapes alexnet", ALEXNET), ("the library alone", LIBRARY)):
            t = times[c.label, name]  # each round's difference: the rounds' loads differ more than the runs in one
            wall = med(a - b for a, b in zip(t.wall, torch_times.wall))
            cpu = med(a - b for a, b in zip(t.cpu, torch_times.cpu))
            lines.append(f"{name}: {label} over import torch, median of the rounds' differences: "
                         f"+{wall:.2f} s wall, +{cpu:.2f} s cpu (target +{TRACE_OVER_TORCH:.2f} s)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="timed rounds (after one warm-up round)")
    ap.add_argument("--before", type=Path, help="another checkout to time beside this one")
    ap.add_argument("--bytecode", action="store_true", help="cache compiled modules, as an installed package does")
    args = ap.parse_args()
    trees = {"now": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with tempfile.TemporaryDirectory(prefix="archdsl-bench-") as scratch:
        if args.bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = scratch
        times = measure(trees, args.runs, env)
    mode = "bytecode cached" if args.bytecode else (
        "bytecode not written (PYTHONDONTWRITEBYTECODE)" if env.get("PYTHONDONTWRITEBYTECODE") else "bytecode as is")
    print(f"{args.runs} runs each, {os.cpu_count()} cores, {mode}")
    print(table(times, trees))


if __name__ == "__main__":
    main()
