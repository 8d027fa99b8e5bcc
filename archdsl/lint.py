"""Warnings for specs that trace but are probably wrong: a softmax before the loss, a bias a
batch norm cancels, two activations in a row, dropout on the class scores, windows that miss
the input's last rows, an image input without its channel axis, one layer with most weights.

`lint` reads a traced model and its rows (`tracer.trace_plan`); each warning points at its
layer in the spec and renders as errors do, with `warning:` in place of `error:`::

    specs/lenet-bn.arch:11:1: warning: conv(6, k5) has a bias, which the batchnorm after it cancels ...
       11 | conv(6, k5)   batchnorm sigmoid avgpool(2, 2)
          | ^^^^^^^^^^^
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .errors import ArchError, Span, report
from .modules import Mul, Permute, Reshape, Transpose
from .summary import Row, Summary
from .values import show_shape


@dataclass(frozen=True)
class SpecWarning:
    """A legal spec that is probably not what was meant; `code` names the kind of warning."""

    code: str  # short and stable: "softmax-before-loss"
    message: str
    span: Span | None  # None only for a row of a plain nn.Module
    notes: tuple[str, ...] = ()

    @property
    def where(self) -> str | None:
        return self.span.where if self.span else None

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def render(self) -> str:
        """`file:line:col: warning: message`, the source line and a caret under the layer, and the notes."""
        return report("warning", self.message, self.span, self.notes)

    def as_error(self) -> ArchError:
        """The warning as a mistake, for --strict."""
        return ArchError(f"{self.message} [{self.code}: a warning, made an error by --strict]", self.span,
                         notes=self.notes)


SOFTMAX_BEFORE_LOSS = "softmax-before-loss"
BIAS_BEFORE_NORM = "bias-before-batchnorm"
ACTIVATION_TWICE = "activation-twice"
DROPOUT_AFTER_OUTPUT = "dropout-after-output"
DROPS_EDGE = "window-drops-edge"
NO_CHANNEL_AXIS = "input-without-channels"
ONE_LAYER_PARAMS = "one-layer-most-params"

# Elementwise nonlinearities: torch's activation modules, less the softmaxes (which normalize
# along an axis), GLU (which halves it) and attention.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Softplus, nn.Softsign,
               nn.LogSigmoid, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold)
IDEMPOTENT = (nn.ReLU, nn.ReLU6, nn.Hardtanh)  # f(f(x)) = f(x): the second of two does nothing
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
WINDOWS = (*CONVS, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
POOLS = WINDOWS[3:]
# Layers that only move values, or drop some in training: a softmax before them still ends the network.
PLUMBING = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, Reshape, Permute, Transpose)

MOST_PARAMS = 0.8  # a layer holding more than this share of the weights is warned about ...
FEW_PARAMS = 10_000  # ... in a network of at least this many
AXES = {1: ("position",), 2: ("row", "column"), 3: ("slice", "row", "column")}  # spatial axes, by count

Finding = tuple[Row, str, str, tuple[str, ...]]  # the row warned about, code, message, notes


def lint(net: nn.Module, summary: Summary, *, input_span: Span | None = None) -> list[SpecWarning]:
    """The warnings for a traced spec, in the order its layers run; `input_span` is where the
    spec's `input` statement is (for a note), when that statement gave the traced shape."""
    flow = _Flow(summary.rows)
    named = dict(net.named_modules(remove_duplicate=False))  # one walk; get_submodule per row is 10x slower
    modules = {r.name: named[r.name] for r in summary if r.kind in ("layer", "join")}
    findings = [*_end_softmax(flow, modules), *_dropout_after_output(flow, modules),
                *_bias_before_norm(flow, modules), *_activation_twice(flow, modules), *_drops_edge(summary, modules),
                *_no_channel_axis(summary, flow, modules, input_span), *_one_layer_params(summary, modules)]
    findings.sort(key=lambda finding: finding[0].index)  # stable: one layer's warnings keep the order above
    return _once([SpecWarning(code, message, row.span, (*notes, *flow.callers(row)))
                  for row, code, message, notes in findings])


# The order layers run in ------------------------------------------------------------


class _Flow:
    """Which layer feeds which. Blocks are transparent; each path of a join starts from what feeds
    the join and ends in the join, which feeds what follows it: paths never feed one another."""

    def __init__(self, rows: tuple[Row, ...]) -> None:
        self.rows = {r.name: r for r in rows}
        self.parent: dict[str, Row] = {}  # a row -> the block, join or path it is in
        self.children: dict[str | None, list[Row]] = {}  # None: the top level
        self.feeder: dict[str, Row] = {}  # a layer or join -> the row whose output it reads (a join: its input)
        self.fed: dict[str, list[Row]] = {}  # a layer or join -> every layer and join that reads its output
        self.entered: dict[str, Row] = {}  # a path's first layer -> the join of that path
        enclosing: list[Row] = []  # the rows the current one is in, outermost first
        for row in rows:
            del enclosing[row.depth:]
            up = enclosing[-1] if enclosing else None
            if up is not None:
                self.parent[row.name] = up
            self.children.setdefault(up.name if up else None, []).append(row)
            enclosing.append(row)
        self.last, _ = self._walk(self.children.get(None, []), None, None)  # what the output comes from

    def _walk(self, rows: list[Row], feeder: Row | None, join: Row | None) -> tuple[Row | None, Row | None]:
        """Link `rows` in order, the first fed by `feeder` (as the start of a path of `join`, if given).
        Returns the last one, and `join` while no layer has started its path yet (a path may open with a block)."""
        for row in rows:
            if row.kind == "block":
                feeder, join = self._walk(self.children.get(row.name, []), feeder, join)
                continue
            if row.kind == "join":
                for path in self.children.get(row.name, []):
                    end, _ = self._walk(self.children.get(path.name, []), feeder, row)
                    if end is not feeder:  # a path with layers: its last one feeds the join
                        self.fed.setdefault(end.name, []).append(row)
            elif join is not None:
                self.entered[row.name] = join
            if feeder is not None:
                self.feeder[row.name] = feeder
                self.fed.setdefault(feeder.name, []).append(row)
            feeder, join = row, None
        return feeder, join

    def backwards(self) -> list[Row]:
        """The rows from the output back towards the input, through layers and joins."""
        out, row = [], self.last
        while row is not None:
            out.append(row)
            row = self.feeder.get(row.name)
        return out

    def callers(self, row: Row) -> tuple[str, ...]:
        """Notes naming the block calls a layer is in, innermost first."""
        notes, up = [], self.parent.get(row.name)
        while up is not None:
            if up.kind == "block" and up.span is not None:
                name = re.match(r"\w*", up.layer).group()  # a call's text starts with the block's name
                notes.append(f"in block {name}, called at {up.span.at(row.span)}: {up.layer}")
            up = self.parent.get(up.name)
        return tuple(notes)


def _once(warnings: list[SpecWarning]) -> list[SpecWarning]:
    """One warning for a layer that runs many times (a block called again, a repeat): the first, counted."""
    seen: dict[tuple, list[SpecWarning]] = {}
    for w in warnings:
        key = (w.code, w.message, w.span.source.name if w.span else None, w.span.start if w.span else id(w))
        seen.setdefault(key, []).append(w)
    return [same[0] if len(same) == 1 else
            SpecWarning(same[0].code, same[0].message, same[0].span,
                        (*same[0].notes, f"the same holds each of the {len(same)} times this layer runs"))
            for same in seen.values()]


# The warnings ------------------------------------------------------------------------


def _end_softmax(flow: _Flow, modules: dict[str, nn.Module]) -> list[Finding]:
    """A softmax or log-softmax the output comes from: the trainer's cross-entropy applies log-softmax itself."""
    for row in flow.backwards():
        module = modules[row.name]
        if isinstance(module, nn.Softmax):
            return [(row, SOFTMAX_BEFORE_LOSS,
                     f"{row.layer} ends the network, but training uses cross-entropy, which applies log-softmax "
                     f"itself: softmax before cross-entropy squashes the gradients; drop it, the loss applies it",
                     ("for probabilities from the trained model, apply softmax to its output",))]
        if isinstance(module, nn.LogSoftmax):
            return [(row, SOFTMAX_BEFORE_LOSS,
                     f"{row.layer} ends the network, but training uses cross-entropy, which applies log-softmax "
                     f"itself: a second log-softmax changes nothing and costs time; drop it", ())]
        if not isinstance(module, PLUMBING):
            return []
    return []


def _dropout_after_output(flow: _Flow, modules: dict[str, nn.Module]) -> list[Finding]:
    """Dropout between the output layer (the last linear or conv) and the end: it drops class scores."""
    dropouts = []
    for row in flow.backwards():
        module = modules[row.name]
        if row.kind == "join":  # the output layer is inside it, or there is none to speak of
            return []
        if isinstance(module, (nn.Linear, *CONVS)):
            return [(d, DROPOUT_AFTER_OUTPUT,
                     f"{d.layer} comes after the output layer {row.layer}: in training it zeroes class scores at "
                     f"random, and the loss reads what is left as the answer; put it before {row.layer}",
                     (f"the output layer is at {row.span.at(d.span)}",) if row.span and d.span else ())
                    for d in reversed(dropouts)]
        if isinstance(module, nn.Dropout) and module.p > 0:
            dropouts.append(row)
    return []


def _bias_before_norm(flow: _Flow, modules: dict[str, nn.Module]) -> list[Finding]:
    """A conv (or a linear on features) whose bias goes straight into batch norm, which subtracts
    each channel's mean and with it any constant added to the channel."""
    found = []
    for name, fed in flow.fed.items():
        layer, norm = modules[name], modules[fed[0].name]
        if len(fed) != 1 or not isinstance(norm, NORMS) or getattr(layer, "bias", None) is None:
            continue
        row = flow.feeder[fed[0].name]
        if isinstance(layer, nn.Linear) and len(row.output_shape) != 2:  # batchnorm1d would normalize another axis
            continue
        if isinstance(layer, (nn.Linear, *CONVS)):
            what, each = ("conv", "channel") if isinstance(layer, CONVS) else ("linear", "feature")
            fixed = f"{row.layer[:-1]}, bias=false)" if row.layer.endswith(")") else f"{what}(..., bias=false)"
            found.append((row, BIAS_BEFORE_NORM,
                          f"{row.layer} has a bias, which the {fed[0].layer} after it cancels (it subtracts each "
                          f"{each}'s mean): write {fixed}",
                          (f"`default {what}(bias=false)` leaves out the bias of every {what} in the spec",)))
    return found


def _activation_twice(flow: _Flow, modules: dict[str, nn.Module]) -> list[Finding]:
    """An activation fed by another; not across into a `mul` join's path, where a sigmoid is a gate."""
    found = []
    for name, first in flow.feeder.items():
        second, before = modules[name], modules[first.name]
        if not (isinstance(second, ACTIVATIONS) and isinstance(before, ACTIVATIONS)):
            continue
        join = flow.entered.get(name)
        if join is not None and isinstance(modules[join.name], Mul):
            continue
        row = flow.rows[name]
        notes = [f"{first.layer} is at {first.span.at(row.span)}"] if first.span and row.span else []
        if type(second) is type(before) and isinstance(second, IDEMPOTENT) and repr(second) == repr(before):
            notes.append(f"{row.layer} of {first.layer} is {first.layer}: the second does nothing")
        found.append((row, ACTIVATION_TWICE,
                      f"{row.layer} right after {first.layer}: two activations in a row, so the second is redundant "
                      f"or a mistake; keep one", tuple(notes)))
    return found


def _drops_edge(summary: Summary, modules: dict[str, nn.Module]) -> list[Finding]:
    """A conv or pooling whose last window ends before the input does (floor mode): the rest is never read."""
    found = []
    for row in summary:
        module = modules.get(row.name)
        if not isinstance(module, WINDOWS):
            continue
        dropped, fix = _dropped(module, row)
        if any(dropped):
            pool = isinstance(module, POOLS)
            fixes = (f"with p{fix}" + (" or ceil=true" if pool else "") + " it keeps them" if fix else
                     "ceil=true keeps them" if pool else "a padding or input size that the windows fit keeps them")
            found.append((row, DROPS_EDGE, f"{row.layer} gets {show_shape(row.input_shape)} and drops the last "
                                           f"{_rows_and_columns(dropped)}; {fixes}", ()))
    return found


def _dropped(module: nn.Module, row: Row) -> tuple[tuple[int, ...], str | None]:
    """Input rows never read on each spatial axis, and a padding tag (`p1`, `p0x1`) that reads them all."""
    n = int(type(module).__name__[-2])  # spatial axes: Conv2d, MaxPool2d
    if module.padding == "same":  # a conv's, with stride 1: every row is read
        return (0,) * n, None
    padding = _per_axis(0 if module.padding == "valid" else module.padding, n)
    kernel, stride = _per_axis(module.kernel_size, n), _per_axis(module.stride, n)
    dilation = _per_axis(getattr(module, "dilation", 1), n)  # average pooling has none
    sizes, outs = row.input_shape[-n:], row.output_shape[-n:]
    dropped, pads = [], []
    for size, out, k, s, p, d in zip(sizes, outs, kernel, stride, padding, dilation):
        if {j * d % s for j in range(k)} != set(range(s)):  # skips rows between windows by design (k1 s2), so
            dropped.append(0)                                # the last rows it skips are no different
            pads.append(p)
            continue
        lost = _lost(size, out, k, s, p, d)
        dropped.append(lost)
        pads.append(p if not lost else _padding_that_fits(size, k, s, p, d, isinstance(module, POOLS)))
    fix = None if None in pads else (str(pads[0]) if len(set(pads)) == 1 else "x".join(map(str, pads)))
    return tuple(dropped), fix


def _per_axis(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    """A module's setting for each of n spatial axes: torch keeps an int or a tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _lost(size: int, out: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """The input's last rows that no window reads: past the last window, or in its holes (dilation)."""
    reach = dilation * (kernel - 1) + 1
    last_windows = range(max(0, out - reach // stride - 2), out)  # the only ones that reach the last rows
    read = {stride * i + dilation * j for i in last_windows for j in range(kernel)}
    row = padding + size - 1  # the last input row, counted in padded rows
    lost = 0
    while lost < size and row - lost not in read:
        lost += 1
    return lost


def _padding_that_fits(size: int, kernel: int, stride: int, padding: int, dilation: int, pool: bool) -> int | None:
    """The smallest padding above `padding` with which no row is lost; None if there is none torch allows
    (a pool pads at most half its window; a conv padded by its whole window reads padding alone)."""
    reach = dilation * (kernel - 1) + 1
    for p in range(padding + 1, (reach // 2 if pool else reach - 1) + 1):
        if _lost(size, (size + 2 * p - reach) // stride + 1, kernel, stride, p, dilation) == 0:
            return p
    return None


def _rows_and_columns(dropped: tuple[int, ...]) -> str:
    """`row and column`, `2 rows and columns`, `row and the last 2 columns`: what is lost, on which axes."""
    names = AXES[len(dropped)]
    lost = [(n, name) for n, name in zip(dropped, names) if n]
    counts = {n for n, _ in lost}
    if len(counts) == 1:
        n = counts.pop()
        return (f"{n} " if n > 1 else "") + " and ".join(name + ("s" if n > 1 else "") for _, name in lost)
    return " and the last ".join((f"{n} {name}s" if n > 1 else name) for n, name in lost)


def _no_channel_axis(summary: Summary, flow: _Flow, modules: dict[str, nn.Module],
                     input_span: Span | None) -> list[Finding]:
    """A square input of two axes read by a conv: a 1-d conv over H channels, where an image was meant."""
    shape = summary.input_shape[1:]
    if len(shape) != 2 or shape[0] != shape[1]:
        return []
    found = []
    for row in summary:
        if row.kind == "layer" and row.name not in flow.feeder and isinstance(modules[row.name], nn.Conv1d):
            c, length = shape
            notes = (f"the input is given at {input_span.at(row.span)}",) if input_span and row.span else ()
            found.append((row, NO_CHANNEL_AXIS,
                          f"{row.layer} gets {show_shape(summary.input_shape)}: the input has two axes, so this is a "
                          f"1-d convolution over {c} channels of length {length}; did you mean input 1x{c}x{length}?",
                          notes))
    return found


def _one_layer_params(summary: Summary, modules: dict[str, nn.Module]) -> list[Finding]:
    """One layer of several with weights holding most of them: where the memory and the overfitting are."""
    total = summary.total_params
    weighted = [r for r in summary if r.kind == "layer" and r.params]
    if total < FEW_PARAMS or len(weighted) < 2:
        return []
    found = []
    for row in weighted:
        if row.params > MOST_PARAMS * total:
            module = modules[row.name]
            convolved = any(isinstance(modules[r.name], CONVS) for r in weighted if r.index < row.index)
            how = ("fewer channels, or a smaller kernel, make it smaller" if not isinstance(module, nn.Linear) else
                   f"it takes {module.in_features:,} features: pooling the feature map smaller before flatten "
                   f"(adaptiveavgpool), or fewer features, make it smaller" if convolved else
                   f"it takes {module.in_features:,} features: fewer features make it smaller")
            found.append((row, ONE_LAYER_PARAMS,
                          f"{row.layer} holds {row.params / total:.1%} of the network's {total:,} parameters: one "
                          f"layer with most of the weights is most of the memory and of the room to overfit",
                          (how,)))
    return found
