"""The `archdsl` command: a thin typer layer over the Python API.

Every user mistake is printed as `file:line:col: error: ...` with the source line
and a caret, and exits with code 2; no traceback. torch is imported only by the
commands that need it, so `archdsl --help` is instant.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import signal
import sys
import textwrap
import threading
from enum import Enum
from typing import Any, Callable, List, NoReturn, Optional

import typer
from typer.core import TyperCommand

from .errors import ArchError, ShapeError, combine
from .memory import show_bytes
from .summary import COLUMNS, DEFAULT_COLUMNS, Column, Summary, columns_named

app = typer.Typer(
    name="archdsl",
    help="Write a network as text; see every layer's shape; get a plain PyTorch nn.Sequential.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

USER_ERROR = 2  # bad spec, bad flag, missing file: the user can fix it


def _version(shown: bool) -> None:
    if shown:
        from . import __version__

        typer.echo(f"archdsl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                          help="Print archdsl's version and exit.")) -> None:
    """Write a network as text; see every layer's shape; get a plain PyTorch nn.Sequential."""


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def fail(error: ArchError) -> NoReturn:
    typer.echo(error.render(), err=True)
    raise typer.Exit(USER_ERROR)


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`--set ratio=4 --set width=2` -> {"ratio": "4", "width": "2"}."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise ArchError(f"--set expects NAME=VALUE, such as --set ratio=4; got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def collect_from_here() -> None:
    """Garbage collection back on (main turns it off for start-up) before long work, the imports' objects
    set aside so that they are never scanned again."""
    gc.freeze()
    gc.enable()


def guarded(run: Callable[[], Any]) -> Any:
    """Run a command body; turn ArchError into the compiler-style report and exit 2."""
    try:
        return run()
    except ArchError as e:
        fail(e)


class _ShapesCommand(TyperCommand):
    """`shapes`: asked for JSON, it tells a mistake in its flags (`--batch 0`) as JSON on stdout too."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        wants_json = _asks_for_json(args)
        try:
            return super().parse_args(ctx, args)
        except Exception as e:  # click's UsageError: typer vendors click, under a private name; it exits 2
            if wants_json and getattr(e, "exit_code", None) == USER_ERROR:
                message = e.format_message() if hasattr(e, "format_message") else str(e)
                typer.echo(json.dumps({"spec": None, "complete": False, "layers": [], "error": {
                    "message": message, "file": None, "line": None, "column": None}}, indent=2))
            raise


def _asks_for_json(args: list[str]) -> bool:
    """Whether the command line asks for --format json (its last --format wins, as in click)."""
    chosen = None
    for flag, value in zip(args, [*args[1:], ""]):
        if flag == "--":
            break
        if flag in ("--format", "-f"):
            chosen = value
        elif flag.startswith("--format="):
            chosen = flag.partition("=")[2]
        elif flag.startswith("-f") and not flag.startswith("--"):
            chosen = flag[2:]
    return chosen == Format.json.value


SPEC_HELP = "A .arch spec file (see specs/), or spec text in quotes."
SET_HELP = "Set a param the spec declares: --set ratio=4 (repeatable)."
INPUT_HELP = "Input shape CxHxW without the batch, e.g. 1x96x96; replaces the spec's `input`."
COLUMNS_HELP = ("Columns of the table and markdown, comma-separated, in order: "
                + "; ".join(f"{c.name} ({c.about})" for c in COLUMNS)
                + f". `default` is {','.join(c.name for c in DEFAULT_COLUMNS)}; `all` is every one. These names "
                  "work too: " + ", ".join(a for c in COLUMNS for a in c.aliases) + ".")


class Optimizer(str, Enum):
    sgd = "sgd"
    momentum = "momentum"
    adamw = "adamw"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command(cls=_ShapesCommand)
def shapes(
    spec: str = typer.Argument(..., show_default=False,
                               help=SPEC_HELP + " Or any nn.Module: torchvision:resnet50, package.module:factory."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP, show_default=False),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP, show_default=False),
    batch: Optional[int] = typer.Option(None, "--batch", "-b", min=1, max=1_000_000, show_default=False,
                                        help="Batch size of the traced input; given, the peak memory of one training "
                                             "step at that batch is estimated too (default: 1, no estimate)."),
    format: Format = typer.Option(Format.table, "--format", "-f",
                                  help="table or markdown for people; json or csv (every column) for programs."),
    depth: Optional[int] = typer.Option(None, "--depth", min=0,
                                        help="Show rows nested at most this deep (0: blocks collapsed)."),
    columns: Optional[str] = typer.Option(None, "--columns", help=COLUMNS_HELP, show_default=False),
    amp: bool = typer.Option(False, "--amp", help="Estimate the training step with bf16 autocast."),
    optimizer: Optional[Optimizer] = typer.Option(None, "--optimizer", show_default=False,
                                                  help="The optimizer whose state the estimate counts: sgd (the "
                                                       "default, no state), momentum, adamw."),
    device: Device = typer.Option(Device.auto, "--device",
                                  help="Whose memory the estimate counts (auto: cuda where there is a GPU; "
                                       "cuda needs none)."),
    fit: Optional[str] = typer.Option(None, "--fit", show_default=False,
                                      help="Print the largest batch whose training step fits in this much memory: "
                                           "16GiB, 80GB, 512MiB."),
    min_input: bool = typer.Option(False, "--min-input", help="Print the smallest input the spec accepts."),
    strict: bool = typer.Option(False, "--strict", help="Make the spec's warnings errors (exit 2)."),
) -> None:
    """Print each layer's output shape, parameters and mult-adds, without running the network.

    Tracing runs on PyTorch's meta device: any input size costs milliseconds and no memory.
    If a layer cannot take its input, the rows up to it are printed, then the error.
    Warnings (legal but probably wrong: softmax before the loss, a bias batch norm cancels, ...)
    follow the table, on stderr.

    The table fits the terminal (or $COLUMNS; into a pipe or file it is not cut): layer and module
    text is cut with "…", and if that is not enough, columns are left out, and it says which.
    """

    def run() -> None:
        from . import api

        try:
            chosen = columns_named(columns)  # before tracing: a misspelt column costs no torch import
            budget = _size(fit)
            sets = parse_sets(set_)
            names = {c.name for c in chosen}
            summary = api.trace(spec, input, batch=batch or 1, flops="flops" in names,
                                receptive_field=bool(names & {"receptive_field", "stride"}), params=sets)
        except ArchError as e:
            traced = e.summary if isinstance(e, ShapeError) else None
            if traced is not None and min_input:  # what a user who asked for it wants most when the input is too small
                e.notes = (*e.notes, *_smallest_note(spec, sets))
            if traced is not None:  # the rows up to the failing layer, as asked for
                _print_summary(traced, format, chosen, depth, error=e)
            else:
                _print_json_error(e, spec, format)
            raise
        try:
            if strict and summary.warnings:
                raise combine([w.as_error() for w in summary.warnings])
            extra: dict[str, Any] = {}
            collect_from_here()  # the estimates below make and drop many fake tensors
            if batch is not None or amp or optimizer is not None or budget is not None or device is not Device.auto:
                how = dict(amp=amp, optimizer=(optimizer or Optimizer.sgd).value, device=_estimate_device(device))
                extra["training_step"] = api.step_memory(spec, input, batch=batch or 1, params=sets, **how)
                if budget is not None:
                    extra["largest_batch"] = (budget, api.largest_batch(spec, budget, input, params=sets, **how))
            if min_input:
                extra["min_input"] = api.min_input(spec, params=sets)
        except ArchError as e:
            _print_json_error(e, spec, format)
            raise
        _print_summary(summary, format, chosen, depth, extra=extra)
        if format is not Format.json:
            for warning in summary.warnings:
                typer.echo(warning.render(), err=True)

    guarded(run)


def _smallest_note(spec: str, sets: dict[str, str]) -> tuple[str, ...]:
    from .api import min_input

    try:
        smallest = min_input(spec, params=sets)
    except ArchError:
        return ()
    return (f"the smallest input it accepts is {'x'.join(map(str, smallest))}",)


def _print_json_error(e: ArchError, spec: str, format: Format) -> None:
    """A mistake as one JSON object on stdout, where a program reading it asked for JSON."""
    if format is Format.json:
        named = e.span.source.name if e.span else e.where
        typer.echo(json.dumps({"spec": named or spec, "complete": False, "layers": [], **_errors_json(e)}, indent=2))


def _size(text: Optional[str]) -> Optional[int]:
    """--fit's memory size, checked before anything is traced."""
    if text is None:
        return None
    from .memory import parse_size

    return parse_size(text, "--fit")


def _estimate_device(device: Device) -> str:
    if device is not Device.auto:
        return device.value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _errors_json(error: ArchError) -> dict[str, Any]:
    """`error`: the first mistake, located; `errors`: all of them, when there are several."""
    located = [_located(e) for e in error.errors]
    return {"error": located[0], **({"errors": located} if len(located) > 1 else {})}


def _located(e: Any) -> dict[str, Any]:
    """An error's or a warning's message and place, for JSON."""
    return {"message": e.message, "file": e.span.source.name if e.span else getattr(e, "where", None),
            "line": e.span.line if e.span else None, "column": e.span.column if e.span else None}


def _print_summary(summary: Summary, format: Format, columns: tuple[Column, ...], depth: Optional[int],
                   error: ShapeError | None = None, extra: Optional[dict[str, Any]] = None) -> None:
    """The table (or markdown, CSV, JSON), then what was asked for beyond it: the training step's memory,
    the largest batch that fits, the smallest input."""
    extra = extra or {}
    if format is Format.json:
        data = summary.to_dict()
        if depth is not None:
            data["layers"] = [r for r in data["layers"] if r["depth"] <= depth]
        data["warnings"] = [{"code": w.code, **_located(w)} for w in summary.warnings]
        if "training_step" in extra:
            data["training_step"] = dataclasses.asdict(extra["training_step"])
        if "largest_batch" in extra:
            data["largest_batch"] = dict(zip(("budget_bytes", "batch"), extra["largest_batch"]))
        if "min_input" in extra:
            data["min_input"] = list(extra["min_input"])
        if error is not None:
            data.update(_errors_json(error))
        typer.echo(json.dumps(data, indent=2))
        return
    if format is Format.csv:
        typer.echo(summary.to_csv(depth), nl=False)
        return
    if format is Format.markdown:
        typer.echo(summary.to_markdown(depth, columns=columns))
    else:
        typer.echo(summary.table(depth, columns=columns, width=_table_width()))
    width = _table_width()
    lines = []
    if "training_step" in extra:
        step = str(extra["training_step"])
        lines.append(step[:1].upper() + step[1:])
    if "largest_batch" in extra:
        from .stepmemory import MAX_BATCH

        budget, largest = extra["largest_batch"]
        lines.append(f"Largest batch whose training step fits in {show_bytes(budget)}: "
                     + (f"at least {largest:,} (the search stops there)" if largest >= MAX_BATCH else f"{largest:,}")
                     if largest else f"Even batch 1 does not fit in {show_bytes(budget)}")
    if "min_input" in extra:
        smallest = "x".join(map(str, extra["min_input"]))
        lines.append(f"Smallest input it accepts: {smallest} (one less on any axis does not trace)")
    for line in lines:
        typer.echo(textwrap.fill(line, width, subsequent_indent="  ") if width else line)


def _table_width() -> Optional[int]:
    """How wide a table may be: the terminal's width ($COLUMNS first). Into a pipe or a file, $COLUMNS if it is
    set, else no limit: text kept or searched later is better whole than cut to a width nobody asked for."""
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    given = os.environ.get("COLUMNS", "")
    return int(given) if given.isdigit() and int(given) > 0 else None


@app.command("diff")
def diff_(
    spec_a: str = typer.Argument(..., metavar="A", help=SPEC_HELP, show_default=False),
    spec_b: Optional[str] = typer.Argument(None, metavar="[B]", show_default=False,
                                           help="The second spec (default: A again, with --set-b)."),
    set_: List[str] = typer.Option([], "--set", "-s", help="A param for both sides: --set ratio=4.",
                                   show_default=False),
    set_a: List[str] = typer.Option([], "--set-a", help="A param for A only.", show_default=False),
    set_b: List[str] = typer.Option([], "--set-b", help="A param for B only.", show_default=False),
    input: Optional[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP, show_default=False),
    batch: int = typer.Option(1, "--batch", "-b", min=1, max=1_000_000, help="Batch size of the traced inputs."),
    depth: Optional[int] = typer.Option(None, "--depth", min=0, help="Show rows nested at most this deep."),
    changed_only: bool = typer.Option(False, "--changed-only", help="Only the rows that differ, in their blocks."),
    format: Format = typer.Option(Format.table, "--format", "-f", help="table for people, json for programs."),
    exit_code: bool = typer.Option(False, "--exit-code", help="Exit 1 when the networks differ, 0 when not "
                                                              "(as git diff --exit-code)."),
) -> None:
    """Two networks side by side: what changed in shapes, params and mult-adds, and the totals' deltas.

    Two specs (`archdsl diff specs/resnet18.arch mine.arch`), or one spec at two settings
    (`archdsl diff specs/vgg.arch --set-b ratio=4`).
    """

    def run() -> bool:
        try:
            return compare()
        except ArchError as e:
            _print_json_error(e, spec_a, format)
            raise

    def compare() -> bool:
        from .api import trace
        from .diff import diff

        if format not in (Format.table, Format.json):
            raise ArchError(f"diff prints a table or json, not {format.value}")
        b = spec_a if spec_b is None else spec_b
        common = parse_sets(set_)
        sides = [(spec, {**common, **parse_sets(own)}) for spec, own in ((spec_a, set_a), (b, set_b))]
        if spec_b is None and sides[0][1] == sides[1][1]:
            raise ArchError("diff compares two networks: name a second spec, or set a param differently with "
                            "--set-a/--set-b (archdsl diff specs/vgg.arch --set-b ratio=4)")
        labels = [" ".join([spec, *(f"{k}={v}" for k, v in sets.items())]) for spec, sets in sides]
        summaries = []
        for side, (spec, sets), label in zip("AB", sides, labels):
            try:
                summaries.append(trace(spec, input, batch=batch, params=sets))
            except ArchError as e:
                e.notes = (*e.notes, f"in {side}: {label}")
                raise
        a_summary, b_summary = summaries
        result = diff(a_summary, b_summary, *labels)
        if format is Format.json:
            data = result.to_dict()
            data["pairs"] = [p.to_dict() for p in result.pairs if (depth is None or p.depth <= depth)
                             and not (changed_only and p.status == "same")]
            typer.echo(json.dumps(data, indent=2))
        else:
            typer.echo(result.table(width=_table_width(), depth=depth, changed_only=changed_only))
        return result.differs

    if guarded(run) and exit_code:
        raise typer.Exit(1)


@app.command()
def layers() -> None:
    """List the built-in layers with their arguments, tags and defaults."""
    from .plan import REGISTRY

    for ldef in REGISTRY.values():
        tags = " ".join(f"{a.tag}N={a.name}" for a in ldef.args if a.tag)
        typer.echo(f"{ldef.signature()}")
        typer.echo(f"    {ldef.doc}" + (f"  Tags: {tags}." if tags else ""))


# Training ---------------------------------------------------------------------

DATASET_HELP = "fashion-mnist, mnist, cifar10, or synthetic (small, made in memory, for smoke tests)."


@app.command()
def train(
    spec: Optional[str] = typer.Argument(None, help=SPEC_HELP + " May be left out with --resume.",
                                         show_default=False),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs to train.", show_default=False),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per step.", show_default=False),
    lr: Optional[float] = typer.Option(None, "--lr", help="SGD learning rate.", show_default=False),
    resize: Optional[int] = typer.Option(None, "--resize", show_default=False,
                                         help="Resize images so the smaller edge is N, like transforms.Resize(N), "
                                              "on the device."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=DATASET_HELP, show_default=False),
    data_root: Optional[str] = typer.Option(None, "--data-root", show_default=False,
                                            help="Look for the data set here first (then $ARCHDSL_DATA, the per-user "
                                                 "cache, system packages, then a download)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for the weights, data order and dropout (default: 0).",
                                       show_default=False),
    out: Optional[str] = typer.Option(None, "--out", "-o", show_default=False,
                                      help="The run directory to write, new or empty "
                                           "(default: runs/<spec name>/<timestamp>)."),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP, show_default=False),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N training examples (quick runs).",
                                        show_default=False),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP, show_default=False),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue this run directory from its last checkpoint.",
                                         show_default=False),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", show_default=False,
                                       help="bf16 autocast (default: on for CUDA)."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last", show_default=False,
                                                 help="channels_last memory format (default: on for images on CUDA)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (the first epoch pays for it)."),
    tune: Optional[bool] = typer.Option(None, "--tune/--no-tune", show_default=False,
                                        help="On the CPU, time faster equivalent formulations of conv and pooling "
                                             "layers on the first batch and keep the fastest (default: on)."),
    init: Optional[str] = typer.Option(None, "--init", show_default=False,
                                       help="xavier (default): d2l's Xavier-uniform weights; keep: torch's own init."),
    download: bool = typer.Option(True, "--download/--no-download",
                                  help="Let torchvision download a data set found nowhere offline."),
) -> None:
    """Train a spec on an image data set: d2l's train_ch6, fast, with a run directory.

    The recipe is the spec's `train` line; flags override any of it.

    Every run writes runs/<spec name>/<timestamp>/: spec, config, metrics, curves.png, checkpoints, weights.

    Ctrl-C saves a checkpoint and prints the command that resumes. More: docs/training.md.
    """

    def run() -> None:
        if spec is not None:  # a mistake in the spec is told before the 2-second torch import
            from .api import plan

            plan(spec, input, **parse_sets(set_))
        from .progress import PlainReporter, RichReporter
        from .trainer import Interrupted
        from .trainer import train as train_model

        collect_from_here()
        reporter = RichReporter() if _stdout_is_terminal() else PlainReporter()
        with _StopSignals() as stop:
            try:
                train_model(spec, epochs=epochs, batch_size=batch_size, lr=lr, resize=resize, dataset=dataset,
                            data_root=data_root, seed=seed, limit=limit, init=init, device=device, amp=amp,
                            channels_last=channels_last, compile=compile, tune=tune, download=download,
                            input_shape=input, params=parse_sets(set_), out=True if out is None else out,
                            resume=resume, progress=reporter)
            except Interrupted as e:
                typer.echo(_interrupted_message(e, spec, stop.name), err=True)
                raise typer.Exit(128 + stop.signal) from None
            except KeyboardInterrupt:
                kept = f"{resume} is as it was" if resume is not None else "nothing was saved"
                typer.echo(f"{stop.name} before training started; {kept}", err=True)
                raise typer.Exit(128 + stop.signal) from None

    guarded(run)


class _StopSignals:
    """While training, SIGTERM (what cluster schedulers send before they kill) stops the run as Ctrl-C does.

    The first SIGINT or SIGTERM raises KeyboardInterrupt, so the trainer keeps the last finished
    epoch and the resume command is printed; later ones are ignored, so that saving is not cut
    short. The exit code is 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM.
    """

    def __init__(self) -> None:
        self.signal = signal.SIGINT

    @property
    def name(self) -> str:
        return "interrupted" if self.signal == signal.SIGINT else f"stopped by {signal.Signals(self.signal).name}"

    def __enter__(self) -> _StopSignals:
        on_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
        self.previous = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
        return self

    def _stop(self, signum: int, frame: Any) -> None:
        self.signal = signum
        for s in self.previous:
            signal.signal(s, signal.SIG_IGN)
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def _stdout_is_terminal() -> bool:
    from rich.console import Console

    return Console().is_terminal


def _interrupted_message(e: Any, spec: Optional[str], how: str = "interrupted") -> str:
    import shlex

    if e.run_dir is None:
        return f"{how} during epoch {e.epoch}; no run directory, so nothing was saved"
    spec_arg = [spec] if spec is not None else []
    command = shlex.join(["archdsl", "train", *spec_arg, "--resume", str(e.run_dir)])
    saved = f"the state after epoch {e.completed}" if e.completed else "the state before the first epoch"
    return (f"{how} during epoch {e.epoch}; {e.run_dir}/checkpoints/last.pt holds {saved}\n"
            f"resume with: {command}")


@app.command("eval")
def eval_(
    run_dir: str = typer.Argument(..., help="A run directory: runs/<spec name>/<timestamp>.", show_default=False),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    data_root: Optional[str] = typer.Option(None, "--data-root", show_default=False,
                                            help="Look for the data set here first (default: the run's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", show_default=False,
                                             help="Examples per evaluation batch (default: the run's)."),
    download: bool = typer.Option(True, "--download/--no-download",
                                  help="Let torchvision download a data set found nowhere offline."),
) -> None:
    """Test accuracy of a run's best (or last) checkpoint on the whole test set."""

    def run() -> None:
        from .trainer import evaluate_run

        collect_from_here()
        r = evaluate_run(run_dir, checkpoint, device=device, data_root=data_root, download=download,
                         batch_size=batch_size)
        for note in r.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"{r.checkpoint}: epoch {r.epoch} of {r.epochs}")
        recorded = f" (measured during training: {r.recorded_test_acc:.3f})" if r.recorded_test_acc is not None else ""
        typer.echo(f"test acc {r.test_acc:.3f} on {r.examples:,} {r.dataset} test images on {r.device}{recorded}")

    guarded(run)


def main() -> None:
    gc.disable()  # start-up makes ~1M long-lived objects (torch, typer): collecting them as they come costs ~0.3 s
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
