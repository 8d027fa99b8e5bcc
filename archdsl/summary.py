"""What `archdsl shapes` shows: one row per layer (and per block), as a table or as JSON.

Plain data, no torch: the tracer fills it in.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import Span, clip, printable
from .values import show_shape


@dataclass(frozen=True)
class Row:
    index: int  # 1-based position in the table
    name: str  # the module's path in the model, as in state_dict keys: "3", "4.0"
    depth: int  # 0 at top level, 1 inside a block, ...
    kind: str  # "layer"; "block" (a block call); "join" (concat, add, mul, split); "path" (one [ path ] of a join)
    layer: str  # the call as written in the spec
    module: str  # the torch module: its repr for a layer, its class for a block
    output_shape: tuple[int, ...]  # batch first
    params: int
    span: Span | None  # where the spec writes it; None for a row of a plain nn.Module
    input_shape: tuple[int, ...] = ()  # batch first; a join's input, before its paths
    trainable: int = 0  # of `params`, those with requires_grad
    mult_adds: int = 0  # torchinfo's count, at the traced batch; a container's is its layers' sum
    kernel: tuple[int, ...] | None = None  # a conv's or pool's kernel_size, as torchinfo shows it
    output_bytes: int = 0  # the output's size in memory (float32: 4 bytes an element)
    flops: int | None = None  # torch's flop counter, forward pass; None where not counted
    receptive_field: tuple[int, ...] | None = None  # per spatial axis, in input pixels; None past a flatten
    stride: tuple[int, ...] | None = None  # effective stride (jump) per spatial axis, in input pixels

    @property
    def frozen(self) -> int:
        return self.params - self.trainable

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def to_dict(self) -> dict[str, Any]:
        listed = lambda v: list(v) if v is not None else None  # noqa: E731
        return {
            "index": self.index, "name": self.name, "depth": self.depth, "kind": self.kind,
            "layer": self.layer, "module": self.module, "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape), "params": self.params, "trainable": self.trainable,
            "mult_adds": self.mult_adds, "kernel": listed(self.kernel), "output_bytes": self.output_bytes,
            "flops": self.flops, "receptive_field": listed(self.receptive_field), "stride": listed(self.stride),
            "file": self.span.source.name if self.span else None, "line": self.line, "column": self.column,
        }


@dataclass(frozen=True)
class Summary:
    """The traced shapes of a spec. Iterate it for the rows; print it for the table."""

    spec: str  # the spec's file name, or <string>
    input_shape: tuple[int, ...]  # batch first
    rows: tuple[Row, ...]
    complete: bool = True  # False when tracing stopped at a shape error

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Row:
        return self.rows[i]

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.rows if r.depth == 0)

    @property
    def trainable_params(self) -> int:
        return sum(r.trainable for r in self.rows if r.depth == 0)

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    @property
    def total_mult_adds(self) -> int:
        return sum(r.mult_adds for r in self.rows if r.depth == 0)

    @property
    def memory(self) -> dict[str, int]:
        """torchinfo's memory totals, in bytes: the input, the forward/backward pass (the outputs of the layers
        that have weights, twice: once kept, once as their gradient), the parameters, and their sum."""
        sizes = {"input": math.prod(self.input_shape) * 4,
                 "forward_backward": 2 * sum(r.output_bytes for r in self.rows if r.kind == "layer" and r.params),
                 "params": self.total_params * 4}
        return {**sizes, "total": sum(sizes.values())}

    @property
    def output_shape(self) -> tuple[int, ...]:
        top = [r for r in self.rows if r.depth == 0]
        return top[-1].output_shape if top else self.input_shape

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec, "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
            "total_params": self.total_params, "trainable_params": self.trainable_params,
            "total_mult_adds": self.total_mult_adds, "memory": self.memory, "complete": self.complete,
            "layers": [r.to_dict() for r in self.rows],
        }

    def table(self, depth: int | None = None) -> str:
        """The rows as an aligned text table; `depth` hides rows nested deeper than it."""
        rows = [r for r in self.rows if depth is None or r.depth <= depth]
        head = ("#", "layer", "module", "output shape", "params", "at")
        body = [(str(r.index), _cell("  " * r.depth + r.layer), compact(r.module), show_shape(r.output_shape),
                 f"{r.params:,}", self._at(r)) for r in rows]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
        right = {0, 4}  # numbers align right

        def fmt(cells: tuple[str, ...]) -> str:
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(fmt(tuple("-" * w for w in widths)))
        out = [f"{self.spec}: input {show_shape(self.input_shape)}", rule, fmt(head), rule, *map(fmt, body), rule]
        if self.complete:
            total = self.total_params
            out += [f"Total params: {total:,}",
                    f"Parameter memory: {total * 4 / 2**20:,.2f} MiB (float32)",
                    f"Output: {show_shape(self.output_shape)}"]
        else:
            out.append(f"Params up to the failing layer: {self.total_params:,}")
        return printable("\n".join(out))  # file names too may hold control characters

    def _at(self, row: Row) -> str:
        """line:col in the spec; file:line:col for a layer of an included file."""
        if row.span is None:
            return ""
        return f"{row.line}:{row.column}" if row.span.source.name == self.spec else row.span.where

    def __str__(self) -> str:
        return self.table()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython's text display
        p.text(self.table())

    def _repr_html_(self) -> str:  # Jupyter's rich display: the same table as HTML
        cells = ("#", "layer", "module", "output shape", "params", "at")
        head = "".join(f"<th>{c}</th>" for c in cells)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:{a}'>{html.escape(v)}</td>" for a, v in zip(
                ("right", "left", "left", "left", "right", "left"),
                (str(r.index), "\u2003" * r.depth + _cell(r.layer), compact(r.module), show_shape(r.output_shape),
                 f"{r.params:,}", self._at(r)))) + "</tr>"
            for r in self.rows)
        foot = (f"Total params: {self.total_params:,} &middot; output {show_shape(self.output_shape)}" if self.complete
                else f"stopped at a shape error; params so far: {self.total_params:,}")
        return (f"<div><b>{html.escape(self.spec)}</b>: input {show_shape(self.input_shape)}"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{foot}</div>")


LAYER_WIDTH = 64  # the table's layer column; JSON and the rows keep the whole text


def _cell(text: str) -> str:
    """A call or path for the layer column: safe to print, cut to its width: `inverted_residual(40, k5, s2, …`."""
    return clip(printable(text[: 2 * LAYER_WIDTH]), LAYER_WIDTH)


_SQUARE = re.compile(r"\((\d+)(?:, \1)+\)")  # (3, 3) -> 3
_DEFAULTS = re.compile(r"(?:, )?\b(?:padding=0|dilation=1|ceil_mode=False|inplace=False|bias=True|start_dim=1|"
                       r"end_dim=-1|eps=1e-05|momentum=0\.1|affine=True|track_running_stats=True|"
                       r"elementwise_affine=True|approximate='none')(?=[,)])")


def compact(module: str) -> str:
    """A module's repr without the noise: square tuples folded, default settings left out.

    `MaxPool2d(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False)` reads
    `MaxPool2d(kernel_size=3, stride=2)`, as one would write it by hand.
    """
    return _DEFAULTS.sub("", _SQUARE.sub(r"\1", module)).replace("(, ", "(")
