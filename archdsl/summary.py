"""What `archdsl shapes` shows: one row per layer (and per block), as a text table, markdown, HTML, CSV or JSON.

Plain data, no torch: the tracer fills it in. COLUMNS is the one list of the table's columns:
the text table, markdown and HTML are made from it, and so are the CLI's `--columns` (its help,
its names, its checks); each column names the JSON keys that hold its values, and CSV has
the same keys as JSON.
"""

from __future__ import annotations

import csv
import html
import io
import math
import re
import textwrap
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence, Union

from .errors import ArchError, Span, _width, clip, printable
from .values import did_you_mean, show_shape


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
            "frozen": self.frozen, "mult_adds": self.mult_adds, "kernel": listed(self.kernel),
            "output_bytes": self.output_bytes, "flops": self.flops, "receptive_field": listed(self.receptive_field),
            "stride": listed(self.stride),
            "file": self.span.source.name if self.span else None, "line": self.line, "column": self.column,
        }


ColumnsLike = Union[str, Sequence[Union[str, "Column"]], None]  # "layer,params", ["layer", "params"]; None: default


@dataclass(frozen=True)
class Summary:
    """The traced shapes of a spec. Iterate it for the rows; print it for the table."""

    spec: str  # the spec's file name, or <string>
    input_shape: tuple[int, ...]  # batch first
    rows: tuple[Row, ...]
    complete: bool = True  # False when tracing stopped at a shape error
    depth: int | None = None  # the deepest rows shown (0: blocks collapsed; None: all); totals count every row
    warnings: tuple[Any, ...] = ()  # the spec's lint.SpecWarning, in the order its layers run

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def filled(self, **by_name: dict[str, Any]) -> Summary:
        """The same summary with Row fields set from {row name: value}: `filled(flops={"0": 1840, ...})`."""
        rows = tuple(replace(r, **{field: values[r.name] for field, values in by_name.items() if r.name in values})
                     for r in self.rows)
        return replace(self, rows=rows)

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
    def total_flops(self) -> int | None:
        """torch's count for the forward pass; None where FLOPs were not counted."""
        counted = [r.flops for r in self.rows if r.depth == 0]
        return sum(counted) if counted and None not in counted else None  # type: ignore[arg-type]

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

    def params_percent(self, row: Row) -> float | None:
        """The row's share of all the parameters, in percent; None when the network has none."""
        return 100 * row.params / self.total_params if self.total_params else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec, "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
            "total_params": self.total_params, "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params, "total_mult_adds": self.total_mult_adds,
            "total_flops": self.total_flops, "memory": self.memory, "complete": self.complete,
            "layers": [self._row_dict(r) for r in self.rows],
        }

    def _row_dict(self, row: Row) -> dict[str, Any]:
        """A row's every field, and what it comes to in the whole: JSON's and CSV's row."""
        return {**row.to_dict(), "params_percent": self.params_percent(row)}

    # Rendering --------------------------------------------------------------------------------------------------

    def table(self, depth: int | None = None, *, columns: ColumnsLike = None, width: int | None = None) -> str:
        """The rows as an aligned text table, then the totals.

        `columns` names columns of COLUMNS (or their aliases, or `default`, `all`), as a list or
        one comma-separated string; None: DEFAULT_COLUMNS. `width` is the most characters a line
        may take (None: as wide as the cells are): the text columns (layer, module) are cut with
        "…" to fit it, and when even that is too wide, columns are dropped in DROP_ORDER, and the
        table says which. `depth` hides rows nested deeper than it (None: the summary's own).
        """
        rows = self._shown(depth)
        chosen = columns_named(columns)
        cells = {c.name: self._cells(c, rows, "  ") for c in chosen}
        kept, widths = _fit(chosen, cells, width)

        def line(texts: list[str]) -> str:
            return GAP.join(pad(cut(t, widths[c.name]), widths[c.name], c.align)
                            for c, t in zip(kept, texts)).rstrip()

        rule = "-" * (sum(widths[c.name] for c in kept) + len(GAP) * (len(kept) - 1))
        out = [self._title(width), rule, line([c.header for c in kept]), rule,
               *(line([cells[c.name][i] for c in kept]) for i in range(len(rows))), rule]
        hidden = ", ".join(n for n in DROP_ORDER if n in {c.name for c in chosen if c not in kept})
        if hidden:  # only a width hides columns
            out += _folded([f"hidden to fit {width} characters: {hidden}"], width)
        for n, group in enumerate(self._totals()):
            out += [rule] * (n > 0) + _folded(group, width)
        return "\n".join(out)

    def to_markdown(self, depth: int | None = None, *, columns: ColumnsLike = None) -> str:
        """A GitHub table of the chosen columns (as `table` takes them), the totals in a list under it."""
        rows = self._shown(depth)
        chosen = columns_named(columns)
        cells = {c.name: self._cells(c, rows, "\u2003") for c in chosen}  # em spaces: markdown drops plain ones

        def line(texts: list[str]) -> str:
            return "| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |"

        return "\n".join([
            self._title(None), "", line([c.header for c in chosen]),
            "|" + "|".join("---:" if c.align == RIGHT else ":---" for c in chosen) + "|",
            *(line([cells[c.name][i] for c in chosen]) for i in range(len(rows))), "",
            *(f"- {total}" for group in self._totals() for total in group)])

    def to_html(self, depth: int | None = None, *, columns: ColumnsLike = None) -> str:
        """An HTML table of the chosen columns, each header aligned as its cells, nothing wrapped; the totals."""
        rows = self._shown(depth)
        chosen = columns_named(columns)
        cells = {c.name: self._cells(c, rows, "\u2003") for c in chosen}
        style = {c.name: f"text-align:{c.align};white-space:nowrap" for c in chosen}

        def line(tag: str, texts: list[str]) -> str:
            return "<tr>" + "".join(f"<{tag} style='{style[c.name]}'>{html.escape(t)}</{tag}>"
                                    for c, t in zip(chosen, texts)) + "</tr>"

        body = "".join(line("td", [cells[c.name][i] for c in chosen]) for i in range(len(rows)))
        totals = "<br>".join(html.escape(total) for group in self._totals() for total in group)
        return (f"<div><b>{html.escape(self._title(None))}</b><table><thead>{line('th', [c.header for c in chosen])}"
                f"</thead><tbody>{body}</tbody></table><p>{totals}</p></div>")

    def to_csv(self, depth: int | None = None) -> str:
        """Every field of the rows shown, under JSON's names: a header line, then one line a row. Shapes and
        other tuples read 1x96x54x54, a value not known is empty, text is made safe to print. For programs."""
        fields = list(self._row_dict(_BLANK))
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        for row in self._shown(depth):
            writer.writerow(_csv_value(v) for v in self._row_dict(row).values())
        return out.getvalue()

    def _shown(self, depth: int | None) -> list[Row]:
        deepest = self.depth if depth is None else depth
        return [r for r in self.rows if deepest is None or r.depth <= deepest]

    def _cells(self, column: Column, rows: list[Row], indent: str) -> list[str]:
        """The column's cells, safe to print, on one line; text at most MOST_WIDTH characters, indented by depth."""
        out = []
        for r in rows:
            text = column.cell(r, self)
            if column.shrinks:  # text from the spec: cut before it is escaped, so that a long call costs little
                text = indent * r.depth * column.indented + text[: 2 * MOST_WIDTH]
                out.append(cut(safe(text), MOST_WIDTH))
            else:
                out.append(safe(text))
        return out

    def _title(self, width: int | None) -> str:
        """`file: input (1, 1, 224, 224)`; a file name too long for the width loses its start."""
        shape = f": input {show_shape(self.input_shape)}"
        spec = printable(self.spec)
        return (spec if width is None else cut(spec[::-1], max(1, width - len(shape)))[::-1]) + shape

    def _totals(self) -> list[list[str]]:
        """torchinfo's totals, in its words, in groups: the counts, then memory."""
        if not self.complete:
            return [[f"Params up to the failing layer: {self.total_params:,}"]]
        counts = [f"Total params: {self.total_params:,}", f"Trainable params: {self.trainable_params:,}",
                  f"Non-trainable params: {self.frozen_params:,}",
                  f"Total mult-adds: {metric(self.total_mult_adds, least=1e6)}"]
        if self.total_flops is not None:
            counts.append(f"FLOPs (torch.utils.flop_counter, forward): {metric(self.total_flops, least=1e6)}")
        mb = {k: f"{v / 1e6:,.2f}" for k, v in self.memory.items()}
        memory = [f"Input size (MB): {mb['input']}", f"Forward/backward pass size (MB): {mb['forward_backward']}",
                  f"Params size (MB): {mb['params']}", f"Estimated Total Size (MB): {mb['total']}",
                  "(MB: 10^6 bytes; float32; estimated as torchinfo does)"]
        return [[*counts, f"Output: {show_shape(self.output_shape)}"], memory]

    def _at(self, row: Row) -> str:
        """line:col in the spec; file:line:col for a layer of an included file."""
        if row.span is None:
            return ""
        return f"{row.line}:{row.column}" if row.span.source.name == self.spec else row.span.where

    def __str__(self) -> str:
        return self.table()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython's text display
        p.text(self.table())

    def _repr_html_(self) -> str:  # Jupyter's rich display
        return self.to_html()


_BLANK = Row(0, "", 0, "layer", "", "", (), 0, None)  # the fields' names, for a CSV header over no rows


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "x".join(map(str, value))
    return printable(value) if isinstance(value, str) else str(value)


# The columns -------------------------------------------------------------------------------------------------------

LEFT, RIGHT = "left", "right"


@dataclass(frozen=True)
class Column:
    """One column of the table: what --columns calls it, what its header says, how a row's cell reads."""

    name: str
    header: str
    align: str  # LEFT or RIGHT, its header as its cells
    cell: Callable[[Row, Summary], str]  # the text people read
    fields: tuple[str, ...]  # the keys of a JSON (and CSV) row that hold its values
    about: str  # for --help
    aliases: tuple[str, ...] = ()  # other names --columns takes (the names are torchinfo's where it has them)
    shrinks: bool = False  # cut with "…" to fit the width; the other columns (shapes, numbers) never are
    indented: bool = False  # indented by the row's depth


def _dims(values: tuple[int, ...] | None) -> str:
    """(11, 11) -> 11x11, as a kernel is written; None -> blank."""
    return "" if values is None else "x".join(map(str, values))


def _trainable(row: Row, summary: Summary) -> str:
    """torchinfo's words: True, False, or Partial when only some of the row's weights train; blank without any."""
    if not row.params:
        return ""
    return "True" if row.trainable == row.params else "False" if not row.trainable else "Partial"


def _percent(share: float | None) -> str:
    return "" if not share else f"{share:.2f}%"


COLUMNS: tuple[Column, ...] = (  # in the order `all` shows them
    Column("index", "#", RIGHT, lambda r, s: str(r.index), ("index",), "row number", ("#",)),
    Column("name", "name", LEFT, lambda r, s: r.name, ("name",), "module path: 4.0", ("path", "var_names")),
    Column("layer", "layer", LEFT, lambda r, s: r.layer, ("layer",), "the call in the spec",
           shrinks=True, indented=True),
    Column("module", "module", LEFT, lambda r, s: compact(r.module), ("module",), "torch's", ("type",),
           shrinks=True),
    Column("input_size", "input shape", LEFT, lambda r, s: show_shape(r.input_shape), ("input_shape",),
           "batch first", ("input_shape", "input")),
    Column("output_size", "output shape", LEFT, lambda r, s: show_shape(r.output_shape), ("output_shape",),
           "batch first", ("output_shape", "output", "shape")),
    Column("num_params", "params", RIGHT, lambda r, s: f"{r.params:,}", ("params",), "a block's: its layers'",
           ("params",)),
    Column("params_percent", "params %", RIGHT, lambda r, s: _percent(s.params_percent(r)), ("params_percent",),
           "of all", ("percent",)),
    Column("kernel_size", "kernel", LEFT, lambda r, s: _dims(r.kernel), ("kernel",), "conv, pool", ("kernel",)),
    Column("mult_adds", "mult-adds", RIGHT, lambda r, s: metric(r.mult_adds), ("mult_adds",), "torchinfo's count",
           ("macs",)),
    Column("trainable", "trainable", LEFT, _trainable, ("trainable", "params"), "True, False, Partial"),
    Column("frozen", "frozen", RIGHT, lambda r, s: f"{r.frozen:,}", ("frozen",), "params not trained",
           ("non_trainable",)),
    Column("flops", "FLOPs", RIGHT, lambda r, s: "" if r.flops is None else metric(r.flops), ("flops",),
           "torch's count, forward; blank unless counted"),
    Column("activation", "activation", RIGHT, lambda r, s: metric(r.output_bytes, "B"), ("output_bytes",),
           "output bytes", ("output_bytes",)),
    Column("receptive_field", "receptive field", LEFT, lambda r, s: _dims(r.receptive_field), ("receptive_field",),
           "in input pixels", ("rf",)),
    Column("stride", "eff. stride", LEFT, lambda r, s: _dims(r.stride), ("stride",), "effective, in input pixels",
           ("jump",)),
    Column("at", "at", LEFT, lambda r, s: s._at(r), ("file", "line", "column"), "line:col in the spec",
           ("where",)),
)
_NAMED = {n: c for c in COLUMNS for n in (c.name, *c.aliases)}
DEFAULT_COLUMNS = tuple(_NAMED[n] for n in ("index", "layer", "output_size", "num_params", "mult_adds", "at"))
# When even the narrowest table is too wide, these go first to last; the layer and output shape stay.
DROP_ORDER = ("stride", "receptive_field", "flops", "activation", "frozen", "trainable", "kernel_size",
              "params_percent", "name", "input_size", "module", "at", "mult_adds", "index", "num_params")


def columns_named(names: ColumnsLike) -> tuple[Column, ...]:
    """The columns `names` ask for, in their order, each once: names or aliases (any case, - for _),
    `default` for DEFAULT_COLUMNS, `all` for every one, or Columns; a list, or one comma-separated string."""
    if names is None:
        return DEFAULT_COLUMNS
    chosen: list[Column] = []
    for given in names.split(",") if isinstance(names, str) else names:
        key = given.name if isinstance(given, Column) else given.strip().lower().replace("-", "_")
        if key in ("all", "default"):
            found = COLUMNS if key == "all" else DEFAULT_COLUMNS
        elif key in _NAMED:
            found = (_NAMED[key],)
        elif key:
            hint = did_you_mean(key, _NAMED)
            raise ArchError(f"unknown column {given.strip()!r}{hint}{' The' if hint else '; the'} columns are: "
                            f"{column_names()}")
        else:
            found = ()
        chosen += [c for c in found if c not in chosen]
    if not chosen:
        raise ArchError(f"no column named; the columns are: {column_names()}")
    return tuple(chosen)


def column_names() -> str:
    """`index (#), name, ...; default, all`: what --columns takes."""
    return ", ".join(c.name for c in COLUMNS) + "; or default, all"


# Fitting a width ---------------------------------------------------------------------------------------------------

GAP = "  "  # between columns
MOST_WIDTH = 64  # a text column's widest, whatever the width: JSON and the rows keep the whole text
LEAST_WIDTH = 16  # a text column is not cut narrower: below this, columns are dropped instead


def _fit(columns: tuple[Column, ...], cells: dict[str, list[str]], width: int | None
         ) -> tuple[list[Column], dict[str, int]]:
    """The columns kept and each one's width, so that a line takes at most `width` characters.

    Numbers and shapes keep their width. The text columns take what is left, the layer first,
    none cut below LEAST_WIDTH; if that does not fit, columns go in DROP_ORDER.
    """
    natural = {c.name: max(map(shown_width, [c.header, *cells[c.name]])) for c in columns}
    if width is None:
        return list(columns), natural
    least = {c.name: min(natural[c.name], max(LEAST_WIDTH, len(c.header))) if c.shrinks else natural[c.name]
             for c in columns}
    kept = list(columns)

    def need(cols: list[Column], widths: dict[str, int]) -> int:
        return sum(widths[c.name] for c in cols) + len(GAP) * (len(cols) - 1)

    while need(kept, least) > width:
        droppable = [c for c in kept if c.name in DROP_ORDER]
        if not droppable:
            break  # the layer and the output shape at their narrowest: wider than asked, never wrapped
        kept.remove(min(droppable, key=_rank))
    widths = dict(natural)
    shrinking = sorted((c for c in kept if c.shrinks), key=_rank, reverse=True)
    room = width - need([c for c in kept if not c.shrinks], natural) - len(GAP) * len(shrinking)
    for i, c in enumerate(shrinking):
        rest = sum(least[d.name] for d in shrinking[i + 1:])  # what the text columns after it need
        widths[c.name] = max(least[c.name], min(natural[c.name], room - rest))
        room -= widths[c.name]
    return kept, widths


def _rank(column: Column) -> int:
    """How long a column stays as the width shrinks: its place in DROP_ORDER; past it for those never dropped."""
    return DROP_ORDER.index(column.name) if column.name in DROP_ORDER else len(DROP_ORDER)


def shown_width(text: str) -> int:
    """Columns `text` takes on a terminal (printable text: its escapes already made)."""
    return len(text) if text.isascii() else sum(map(_width, text))


def cut(text: str, width: int) -> str:
    """`text` in at most `width` columns of a terminal, cut with an ellipsis; wide characters count two."""
    if shown_width(text) <= width:
        return text
    used = 0
    for n, c in enumerate(text):
        used += _width(c)
        if used >= width:  # text[:n] leaves room for the ellipsis
            return clip(text, n + 1)
    return text


def _folded(lines: list[str], width: int | None) -> list[str]:
    """Lines under a table folded to its width, the folds indented."""
    if width is None:
        return lines
    return [part for line in lines for part in textwrap.wrap(line, width, subsequent_indent="  ")]


def pad(text: str, width: int, align: str) -> str:
    space = " " * (width - shown_width(text))
    return space + text if align == RIGHT else text + space


def safe(text: str) -> str:
    """Safe to print, on one line (a module's repr may hold line breaks)."""
    return text if text.isascii() and text.isprintable() else printable(text.replace("\n", " "))


_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def metric(n: float, unit: str = "", least: float = 1.0) -> str:
    """938754826 -> `938.75 M`, as torchinfo prints its totals: two decimals in the largest of T, G, M, K
    that `n` reaches, but no smaller one than `least` (`0.42 M`); under 1,000 (and least 1) as it is."""
    for size, prefix in _PREFIXES:
        if n >= size or size == least:
            return f"{n / size:,.2f} {prefix}{unit}"
    return f"{n:,.0f} {unit}".rstrip()


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
