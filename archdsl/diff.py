"""What `archdsl diff` shows: two traced networks aligned row by row, side by side, with what changed.

Plain data, no torch: it compares two Summaries. Rows are aligned as a tree, the top-level rows of the
two networks first and then, inside each pair of blocks (or joins, or paths), their own rows, so that
a block's layers never pair with another block's. Rows pair by kind and class (a Conv2d with a Conv2d,
a block `stage(...)` with a block `stage(...)`), not by their sizes: `conv(64, k3)` against
`conv(16, k3)` is one layer changed, not one removed and one added.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Callable

from .errors import visible
from .summary import GAP, LEFT, MOST_WIDTH, RIGHT, Row, Summary, cut, pad, safe, shown_width, metric
from .values import show_shape

STATUSES = ("changed", "added", "removed", "same")
MARKS = {"same": " ", "changed": "|", "removed": "<", "added": ">"}  # as `diff --side-by-side` marks its lines
IDENTICAL = "no differences in layers, shapes, params or mult-adds"


@dataclass(frozen=True)
class Pair:
    """One line of the diff: a row of network a and its counterpart in b, or a row only one of them has."""

    status: str  # "same", "changed", "added" (only b has it: a is None) or "removed" (only a: b is None)
    a: Row | None
    b: Row | None
    changes: tuple[str, ...] = ()  # what differs: "shape", "params", "mult_adds", "trainable", "module"

    @property
    def depth(self) -> int:
        return (self.a or self.b).depth  # rows pair only with rows nested as deep: the children of a pair

    @property
    def params_delta(self) -> int:
        return _get(self.b, "params") - _get(self.a, "params")

    @property
    def mult_adds_delta(self) -> int:
        return _get(self.b, "mult_adds") - _get(self.a, "mult_adds")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "changes": list(self.changes), "depth": self.depth,
                "params_delta": self.params_delta, "mult_adds_delta": self.mult_adds_delta,
                "a": self.a.to_dict() if self.a else None, "b": self.b.to_dict() if self.b else None}


def _get(row: Row | None, field: str) -> int:
    return getattr(row, field) if row is not None else 0


def _compare(a: Row, b: Row) -> Pair:
    sides = {"shape": (a.output_shape, b.output_shape), "params": (a.params, b.params),
             "mult_adds": (a.mult_adds, b.mult_adds), "trainable": (a.trainable, b.trainable),
             "module": (a.module, b.module)}
    changes = tuple(what for what, (x, y) in sides.items() if x != y)
    return Pair("changed" if changes else "same", a, b, changes)


def diff(a: Summary, b: Summary, label_a: str | None = None, label_b: str | None = None) -> SummaryDiff:
    """Network a against network b, row by row; the labels name them in the table (default: their spec names),
    e.g. "specs/vgg.arch ratio=4" for a spec traced with --set ratio=4."""
    trees = [_tree(a.rows), _tree(b.rows)]
    rooted = [len(tree) == 1 and tree[0].row.name == "" for tree in trees]  # a module's own row holds all others
    if rooted[0] != rooted[1]:  # a spec against a module: pair the spec's rows with those inside the module's
        trees = [tree[0].children if root else tree for tree, root in zip(trees, rooted)]
    return SummaryDiff(a, b, tuple(_align(*trees)),
                       a.spec if label_a is None else label_a, b.spec if label_b is None else label_b)


# Alignment ------------------------------------------------------------------------------------------


@dataclass
class _Node:
    """A row and the rows nested in it (one deeper, up to the next row as shallow as it)."""

    row: Row
    children: list[_Node]

    def rows(self) -> list[Row]:
        """This row and all those nested in it, in table order."""
        return [self.row, *(r for child in self.children for r in child.rows())]


def _tree(rows: tuple[Row, ...]) -> list[_Node]:
    top: list[_Node] = []
    open_: list[_Node] = []  # from the top level down to the last row seen
    for row in rows:
        del open_[row.depth:]
        node = _Node(row, [])
        (open_[-1].children if open_ else top).append(node)
        open_.append(node)
    return top


def _text(row: Row) -> tuple[str, str]:
    """The row as written, spaces aside: rows that match so are paired before any others."""
    return row.kind, "".join(row.layer.split())


def _key(row: Row) -> tuple[str, str]:
    """What two rows need in common to pair at all: the kind, and a block's name or a layer's module class."""
    if row.kind == "block":
        return row.kind, row.layer.split("(")[0].strip()
    if row.kind == "path":
        return row.kind, ""
    return row.kind, row.module.split("(")[0]


def _align(a: list[_Node], b: list[_Node]) -> list[Pair]:
    """The pairs of two lists of sibling rows and, within each pair of rows, of their children.

    Rows written alike pair first; between those, rows of one kind and class. A stretch left between
    two pairs is the rows changed in place where both sides have as many of each kind (relu for gelu),
    else rows removed from a and rows added in b.
    """
    if not (a or b):
        return []
    fine = _matches([_text(n.row) for n in a], [_text(n.row) for n in b], positional=False)
    matched: list[tuple[int, int]] = []
    for (i1, j1), (i2, j2) in zip([(-1, -1), *fine], [*fine, (len(a), len(b))]):
        if i2 - i1 > 1 and j2 - j1 > 1:  # rows between the last pair and this one on both sides
            coarse = _matches([_key(n.row) for n in a[i1 + 1:i2]], [_key(n.row) for n in b[j1 + 1:j2]], True)
            matched += [(i + i1 + 1, j + j1 + 1) for i, j in coarse]
        matched.append((i2, j2))
    out: list[Pair] = []
    i = j = 0
    for i2, j2 in matched:  # the last is (len(a), len(b)), past the ends: it closes the last stretch
        gap_a, gap_b = a[i:i2], b[j:j2]
        if len(gap_a) == len(gap_b) and all(x.row.kind == y.row.kind for x, y in zip(gap_a, gap_b)):
            out += [p for x, y in zip(gap_a, gap_b) for p in _pair(x, y)]
        else:
            out += [Pair("removed", r, None) for n in gap_a for r in n.rows()]
            out += [Pair("added", None, r) for n in gap_b for r in n.rows()]
        if i2 < len(a):
            out += _pair(a[i2], b[j2])
        i, j = i2 + 1, j2 + 1
    return out


def _pair(x: _Node, y: _Node) -> list[Pair]:
    return [_compare(x.row, y.row), *_align(x.children, y.children)]


MOST_EDITS = 500  # past this many rows removed and added, Myers' search (quadratic in them) gives way


def _matches(a: list[tuple[str, str]], b: list[tuple[str, str]], positional: bool) -> list[tuple[int, int]]:
    """The (i, j) of equal a[i] and b[j] in a longest common subsequence, in order; where more than
    MOST_EDITS rows differ, only the equal ones at the same places (`positional`), or none but the
    common start and end."""
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    end = 0
    while end < min(len(a), len(b)) - start and a[-1 - end] == b[-1 - end]:
        end += 1
    mid_a, mid_b = a[start:len(a) - end], b[start:len(b) - end]
    found = _myers(mid_a, mid_b, MOST_EDITS)
    if found is None:
        found = [(k, k) for k, (x, y) in enumerate(zip(mid_a, mid_b)) if x == y] if positional else []
    return ([(k, k) for k in range(start)] + [(i + start, j + start) for i, j in found]
            + [(len(a) - end + k, len(b) - end + k) for k in range(end)])


def _myers(a: list[tuple[str, str]], b: list[tuple[str, str]], most: int) -> list[tuple[int, int]] | None:
    """Myers' shortest edit script (1986): the matched (i, j), or None past `most` edits.

    Its work grows with the rows times the edits, not with the square of the rows as difflib's does
    where most keys repeat (two networks of thousands of ReLUs and Conv2ds).
    """
    n, m = len(a), len(b)
    v = {1: 0}  # on each diagonal k = x - y, the furthest x reached
    history: list[dict[int, int]] = []
    for d in range(min(most, n + m) + 1):
        for k in range(-d, d + 1, 2):
            down = k == -d or (k != d and v[k - 1] < v[k + 1])  # a row of b added, else one of a removed
            x = v[k + 1] if down else v[k - 1] + 1
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x, y = x + 1, y + 1
            v[k] = x
            if x >= n and y >= m:
                return _backtrack(history, n, m, d)
        history.append(dict(v))
    return None


def _backtrack(history: list[dict[int, int]], x: int, y: int, edits: int) -> list[tuple[int, int]]:
    """Walk Myers' search back from the end: the diagonal steps are the matches."""
    out: list[tuple[int, int]] = []
    for d in range(edits, 0, -1):
        v, k = history[d - 1], x - y
        before = k + 1 if k == -d or (k != d and v[k - 1] < v[k + 1]) else k - 1
        px = v[before]
        py = px - before
        while x > px and y > py:
            x, y = x - 1, y - 1
            out.append((x, y))
        x, y = px, py
    out += [(k, k) for k in range(min(x, y) - 1, -1, -1)]  # the common start, before the first edit
    return out[::-1]


# The diff ------------------------------------------------------------------------------------------

def _whole(n: int) -> str:
    return f"{n:,}"


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f}"


# The totals compared, in the shapes table's words: (label, Summary attribute, how a value reads)
TOTALS = (("Total params", "total_params", _whole), ("Trainable params", "trainable_params", _whole),
          ("Total mult-adds", "total_mult_adds", metric))
MEMORY = (("Input size (MB)", "input"), ("Forward/backward pass size (MB)", "forward_backward"),
          ("Params size (MB)", "params"), ("Estimated Total Size (MB)", "total"))  # MB: 10^6 bytes, as torchinfo


@dataclass(frozen=True)
class SummaryDiff:
    """Two networks' rows aligned. Print it for the side-by-side table; `to_dict()` for JSON."""

    a: Summary
    b: Summary
    pairs: tuple[Pair, ...]
    label_a: str
    label_b: str

    @property
    def counts(self) -> dict[str, int]:
        """Rows by status; a changed layer inside a block most often changes the block's row too."""
        return {s: sum(p.status == s for p in self.pairs) for s in STATUSES}

    @property
    def differs(self) -> bool:
        """Whether any row or the input differs: what an `--exit-code` would report."""
        return self.a.input_shape != self.b.input_shape or any(p.status != "same" for p in self.pairs)

    def totals(self) -> dict[str, Any]:
        """Both networks' totals and b's minus a's: params, mult-adds, torchinfo's memory in bytes, output."""
        def side(s: Summary) -> dict[str, Any]:
            return {**{field: getattr(s, field) for _, field, _ in TOTALS}, "memory": s.memory,
                    "output_shape": list(s.output_shape)}

        a, b = side(self.a), side(self.b)
        delta = {**{field: b[field] - a[field] for _, field, _ in TOTALS},
                 "memory": {k: b["memory"][k] - a["memory"][k] for k in a["memory"]},
                 "output_shape_changed": a["output_shape"] != b["output_shape"]}
        return {"a": a, "b": b, "delta": delta}

    def to_dict(self) -> dict[str, Any]:
        def side(s: Summary, label: str) -> dict[str, Any]:
            return {"label": label, "spec": s.spec, "input_shape": list(s.input_shape), "complete": s.complete}

        return {"a": side(self.a, self.label_a), "b": side(self.b, self.label_b), "differs": self.differs,
                "counts": self.counts, "pairs": [p.to_dict() for p in self.pairs], "totals": self.totals()}

    def table(self, width: int | None = None, depth: int | None = None, changed_only: bool = False) -> str:
        """The two networks side by side, then their totals and the change in each.

        `width`: the most characters a line takes (the layer text and the change's tail give way first,
        then params read 1.2M); `depth` hides rows nested deeper; `changed_only` hides the rows that are
        the same, but for the blocks around a changed row.
        """
        titles = [self._title("a", self.a, self.label_a, width), self._title("b", self.b, self.label_b, width)]
        head, *body = _side_by_side(self._shown(depth, changed_only), width)
        values = self._total_lines()
        totals = _aligned([("", "a", "b", "change"), *values], right={1, 2})
        if width and max(map(shown_width, totals)) > width:  # a line each, `label: a -> b, change`, wrapped
            totals = [part for label, x, y, change in values for part in textwrap.wrap(
                f"{label}: {x} -> {y}" + (f", {change}" if change else ""), width, subsequent_indent="  ")]
        widest = max(map(shown_width, [*titles, head, *body, *totals]))
        rule = "-" * (min(widest, width) if width else widest)
        rows = [rule, head, rule, *body] if body else []  # changed_only and nothing changed: no empty table
        foot = "rows: " + ", ".join(f"{n} {s}" for s, n in self.counts.items()) if self.differs else IDENTICAL
        lines = [*titles, *rows, rule, *totals, rule, *(textwrap.wrap(foot, width) if width else [foot])]
        return "\n".join(cut(line, width) if width else line for line in lines)

    def __str__(self) -> str:
        return self.table()

    def _title(self, side: str, s: Summary, label: str, width: int | None) -> str:
        """`a: specs/vgg.arch ratio=4: input (1, 1, 224, 224)`; a label too long for the width loses its start."""
        tail = f": input {show_shape(s.input_shape)}" + ("" if s.complete else " (stopped at a shape error)")
        label = "".join(map(visible, label))  # one line: a line break too shows as \n
        room = None if width is None else max(1, width - len(tail) - len(side) - 2)
        return f"{side}: {label if room is None else cut(label[::-1], room)[::-1]}{tail}"

    def _shown(self, depth: int | None, changed_only: bool) -> list[Pair]:
        shown = [p for p in self.pairs if depth is None or p.depth <= depth]
        if not changed_only:
            return shown
        keep: set[int] = set()
        around: list[int] = []  # the pairs enclosing the current one
        for i, p in enumerate(shown):
            del around[p.depth:]
            if p.status != "same":
                keep.update(around)
                keep.add(i)
            around.append(i)
        return [p for i, p in enumerate(shown) if i in keep]

    def _total_lines(self) -> list[tuple[str, str, str, str]]:
        """(label, a's value, b's value, the change) for each total."""
        t = self.totals()
        a, b = t["a"], t["b"]
        counts = [(label, a[f], b[f], show) for label, f, show in TOTALS]
        memory = [(label, a["memory"][k], b["memory"][k], _mb) for label, k in MEMORY]
        lines = [(label, show(x), show(y), _change(x, y, show)) for label, x, y, show in counts + memory]
        shapes = [show_shape(tuple(s["output_shape"])) for s in (a, b)]
        return [*lines, ("Output", *shapes, "changed" if t["delta"]["output_shape_changed"] else "")]


def _change(old: int, new: int, show: Callable[[int], str]) -> str:
    """A total's change, read as its values are: `-85,712,832 (-66.5%)`, `+2.28 G (+125.4%)`; nothing
    when it is the same."""
    if old == new:
        return ""
    return ("+" if new > old else "-") + show(abs(new - old)) + (f" ({_percent(old, new)})" if old else "")


def _percent(old: int, new: int) -> str:
    """-93.8%; a change under 0.1% with its first digit (+0.003%), so that it never reads as none."""
    p = (new - old) / old * 100
    return f"{p:+.1f}%" if abs(p) >= 0.1 else f"{p:+.1g}%"


def _note(pair: Pair, brief: bool = False) -> str:
    """The last column: what changed, as `shape, params -93.7%, mult-adds -93.7%`; `brief` leaves out
    the mult-adds where the params changed too."""
    if pair.status in ("added", "removed"):
        return pair.status
    a, b, changes = pair.a, pair.b, pair.changes
    shown = [f for f in ("params", "mult_adds") if f in changes][: 1 if brief else 2]
    notes = ["shape"] * ("shape" in changes)
    for field in shown:
        old, new = getattr(a, field), getattr(b, field)
        notes.append(f"{field.replace('_', '-')} {_percent(old, new) if old else f'+{new:,}'}")
    if "trainable" in changes and "params" not in changes:
        notes.append("trainable")  # as many params, frozen otherwise
    if changes and not notes:
        notes.append("module")  # only the settings: relu for gelu, or a stride that keeps the shape
    return ", ".join(notes)


# The side-by-side table ----------------------------------------------------------------------------

HEAD = ("a: layer", "output shape", "params", "", "b: layer", "output shape", "params", "change")
NARROW_HEAD = ("a: layer", "output", "params", "", "b: layer", "output", "params", "change")  # output: 64x56x56
LAYERS, SHAPES, PARAMS, NOTE = (0, 4), (1, 5), (2, 6), (7,)
# What gives way, in turn, when the table is wider than the terminal: (columns, the least width each keeps).
# First the layer text and the note's tail; then the cells turn narrow (params 1.18M, shapes 64x56x56 as an
# input is written, without the batch, notes brief, one space between columns); then the rest.
WIDE = ((LAYERS, 24), (NOTE, 24))
NARROW = ((LAYERS, 12), (NOTE, 20), (LAYERS, len(HEAD[0])), (SHAPES, 8), (NOTE, 6), (SHAPES, 5))


def _side_by_side(pairs: list[Pair], width: int | None) -> list[str]:
    """The header line and one line per pair, fitted to `width`."""
    for narrow in (False, True):
        cells = [NARROW_HEAD if narrow else HEAD, *(_cells(p, narrow) for p in pairs)]
        gap = " " if narrow else GAP
        widths = _shrink(_widths(cells), width, WIDE, gap)
        if width is None or _span(widths, gap) <= width:
            break
    widths = _shrink(widths, width, NARROW, gap)
    return [_line(c, widths, set(PARAMS), gap) for c in cells]


def _cells(pair: Pair, narrow: bool) -> tuple[str, ...]:
    def side(row: Row | None) -> tuple[str, str, str]:
        if row is None:
            return "", "", ""
        layer = cut(safe("  " * row.depth + row.layer[: 2 * MOST_WIDTH]), MOST_WIDTH)  # as the shapes table
        if narrow:  # the batch, the same in every row, left out; params as the totals' mult-adds, 1.18M
            return layer, "x".join(map(str, row.output_shape[1:])), metric(row.params).replace(" ", "")
        return layer, show_shape(row.output_shape), f"{row.params:,}"

    return (*side(pair.a), MARKS[pair.status], *side(pair.b), _note(pair, brief=narrow))


def _widths(cells: list[tuple[str, ...]]) -> list[int]:
    return [max(shown_width(line[i]) for line in cells) for i in range(len(cells[0]))]


def _span(widths: list[int], gap: str) -> int:
    return sum(widths) + len(gap) * (len(widths) - 1)


def _shrink(widths: list[int], width: int | None, steps: tuple[tuple[tuple[int, ...], int], ...],
            gap: str) -> list[int]:
    """Narrow the columns of each step in turn, the widest first, down to the step's least width,
    until the table fits `width`."""
    widths = list(widths)
    for columns, least in steps:
        while width is not None and _span(widths, gap) > width:
            widest = max(columns, key=lambda c: widths[c])
            if widths[widest] <= least:
                break
            widths[widest] -= 1
    return widths


def _line(cells: tuple[str, ...], widths: list[int], right: set[int], gap: str = GAP) -> str:
    return gap.join(pad(cut(c, w), w, RIGHT if i in right else LEFT)
                    for i, (c, w) in enumerate(zip(cells, widths))).rstrip()


def _aligned(lines: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = _widths(lines)
    return [_line(c, widths, right) for c in lines]
