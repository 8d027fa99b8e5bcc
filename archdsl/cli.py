"""The `archdsl` command: a thin typer layer over the Python API.

Every user mistake is printed as `file:line:col: error: ...` with the source line
and a caret, and exits with code 2; no traceback. torch is imported only by the
commands that need it, so `archdsl --help` is instant.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Any, Callable, List, NoReturn, Optional

import typer

from .errors import ArchError, ShapeError

app = typer.Typer(
    name="archdsl",
    help="Write a network as text; see every layer's shape; get a plain PyTorch nn.Sequential.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

USER_ERROR = 2  # bad spec, bad flag, missing file: the user can fix it


class Format(str, Enum):
    table = "table"
    json = "json"


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


def guarded(run: Callable[[], Any]) -> Any:
    """Run a command body; turn ArchError into the compiler-style report and exit 2."""
    try:
        return run()
    except ArchError as e:
        fail(e)


SPEC_HELP = "A .arch spec file (see specs/), or spec text in quotes."
SET_HELP = "Set a param the spec declares: --set ratio=4 (repeatable)."
INPUT_HELP = "Input shape CxHxW without the batch, e.g. 1x96x96; replaces the spec's `input`."


@app.command()
def shapes(
    spec: str = typer.Argument(..., help=SPEC_HELP, show_default=False),
    input: Optional[str] = typer.Option(None, "--input", "-i", help=INPUT_HELP, show_default=False),
    set_: List[str] = typer.Option([], "--set", "-s", help=SET_HELP, show_default=False),
    batch: int = typer.Option(1, "--batch", "-b", min=1, help="Batch size of the traced input."),
    format: Format = typer.Option(Format.table, "--format", "-f", help="table for people, json for programs."),
    depth: Optional[int] = typer.Option(None, "--depth", min=0,
                                        help="Show rows nested at most this deep (0: blocks collapsed)."),
) -> None:
    """Print each layer's output shape and parameter count, without running the network.

    Tracing runs on PyTorch's meta device: any input size costs milliseconds and no memory.
    If a layer cannot take its input, the rows up to it are printed, then the error.
    """

    def run() -> None:
        from .api import trace

        try:
            summary = trace(spec, input, batch=batch, **parse_sets(set_))
        except ShapeError as e:
            if e.summary is not None:
                _print_summary(e.summary, format, depth, error=e)
            raise
        _print_summary(summary, format, depth)

    guarded(run)


def _print_summary(summary: Any, format: Format, depth: Optional[int], error: ShapeError | None = None) -> None:
    if format is Format.json:
        data = summary.to_dict()
        if depth is not None:
            data["layers"] = [r for r in data["layers"] if r["depth"] <= depth]
        if error is not None:
            span = error.span
            data["error"] = {"message": error.message, "line": span.line if span else None,
                             "column": span.column if span else None}
        typer.echo(json.dumps(data, indent=2))
    else:
        typer.echo(summary.table(depth))


@app.command()
def layers() -> None:
    """List the built-in layers with their arguments, tags and defaults."""
    from .plan import REGISTRY

    for ldef in REGISTRY.values():
        tags = " ".join(f"{a.tag}N={a.name}" for a in ldef.args if a.tag)
        typer.echo(f"{ldef.signature()}")
        typer.echo(f"    {ldef.doc}" + (f"  Tags: {tags}." if tags else ""))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
