"""Receptive field and effective stride of every module's output; the smallest input a spec accepts.

A field is followed through the model's own forward pass on the meta device: a dispatch mode
sees each aten operation (convolution, pooling, views, joins, ...) and keeps, for every tensor,
which of its axes walk along which spatial axis of the input and which window of input pixels
each position along them sees; forward hooks read that off each module's output. So it works on
any nn.Module, archdsl's or not, whatever its forward does with the operations listed here; an
operation not listed that moves pixels around is an ArchError, not a guess.

Conventions, those of Araujo, Norris and Sim, "Computing Receptive Fields of Convolutional Neural
Networks" (Distill, 2019) and their library, google-research/receptive_field:
- A window counts padding: it is the same size wherever its position lies, and `start` is
  negative where it reaches into the padding. Reflect, replicate and circular padding count as
  zero padding does.
- Where paths meet (add, mul, concat, ...) a position sees the union of what its inputs see
  there, its size that of the union's hull.
- Global and adaptive pooling see the hull of the windows they pool: global pooling the whole
  input, padding included ((n - 1) * stride + size of its input's field, on each axis).
- Normalisation statistics do not count: batch norm's running ones never depend on the input,
  and group, instance or layer norm over the spatial axes would make every field global.
- The model runs in eval mode: dropout off, batch norm on its running statistics.
- A reshape that cuts a spatial axis into pieces (Swin's and MaxViT's windows) loses the axis:
  what its positions saw counts for every value from then on, an upper bound; a tensor without
  each spatial axis of the input as an axis of its own has no field.
- Layers that resample (upsampling, pixel shuffle, transposed convolution, adaptive pooling whose
  sizes do not divide) map positions to the input with rounding, which a start and a stride cannot
  say exactly: after them the stride is the average (maybe a fraction), the start is within a
  stride of the truth, and the size may be over by up to a stride.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from . import syntax as S
from .errors import ArchError
from .parser import parse_source
from .plan import BlockStep, Plan, Step, exprs, expand
from .tracer import trace_plan
from .values import show_shape

Number = Union[int, Fraction]


@dataclass(frozen=True)
class Field:
    """The input pixels one output position sees, per spatial axis of the input (H, W for images).

    Position i along an axis sees the input pixels start + i * stride ... start + i * stride + size - 1.
    Where positions also see pixels that do not move with them (a squeeze-and-excitation gate, from
    global pooling, shows each position the whole input) those count in `size` and `start`, and the
    window no longer moves: `stride` is still the spacing of the positions on the input.
    """

    size: tuple[int, ...]  # the most pixels one position sees, padding counted
    stride: tuple[Number, ...]  # the effective stride ("jump"): input pixels between neighbouring positions
    start: tuple[Number, ...]  # the first pixel position 0 sees; negative where it lies in the padding


def receptive_fields(net: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Field | None]:
    """The receptive field of each module's output (its last call), by module path as in named_modules().

    `input_shape` is C x spatial sizes, without the batch: (3, 224, 224), or (4, 100) for a 1-d
    signal. A module's field is None where its output no longer has each spatial axis of the
    input as an axis of its own (after flatten or a linear layer), where its output is not a
    tensor that depends on the input, where it was not called, and for an input with no spatial
    axes. A real-weights `net` is copied to the meta device first; a meta one is run as it is.
    """
    shape = tuple(int(n) for n in input_shape)
    if not shape or any(n < 1 for n in shape):
        raise ArchError(f"an input shape is C x sizes, each at least 1, not {show_shape(shape)}")
    model = net if all(t.is_meta for t in itertools.chain(net.parameters(), net.buffers())) \
        else copy.deepcopy(net).to("meta")
    axes = len(shape) - 1
    names = {id(m): name for name, m in model.named_modules()}
    fields: dict[str, Field | None] = dict.fromkeys(names.values())
    follow = _Follow()

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        name = names.get(id(module))
        if name is not None:
            out = next(_tensors(output), None)
            state = follow.state(out) if out is not None else None
            fields[name] = _field(state, axes) if state is not None and axes else None

    modes = [(m, m.training) for m in model.modules()]
    x = torch.empty((1, *shape), device="meta")  # (B, C, *spatial)
    follow.put(x, _State(((_Part(1),), (_Part(shape[0]),),
                          *((_Part(n, a, (_Window(Fraction(0), Fraction(1), Fraction(1)),)),)
                            for a, n in enumerate(shape[1:]))), {}))
    handle = nn.modules.module.register_module_forward_hook(hook)  # one hook for all: 700 cost 0.4 s
    try:
        model.eval()
        with torch.no_grad(), follow:
            model(x)
    finally:
        handle.remove()
        for m, training in modes:
            m.train(training)
    return fields


# What a tensor carries ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Window:
    """Position i of an axis sees input pixels start + i * jump ... start + i * jump + size - 1."""

    start: Fraction
    jump: Fraction
    size: Fraction

    def at(self, i: int) -> tuple[Fraction, Fraction]:
        lo = self.start + i * self.jump
        return lo, lo + self.size - 1

    def gather(self, offset: Fraction, span: Fraction, step: Fraction) -> _Window:
        """The window of an output position i that reads positions offset + i * step ... + span of this axis."""
        return _Window(self.start + offset * self.jump + min(0, span * self.jump), self.jump * step,
                       self.size + span * abs(self.jump))


@dataclass(frozen=True)
class _Part:
    """A run of positions of a tensor axis, along input axis `axis` (None: batch, channels, features, ...).

    An axis is usually one part; a reshape that merges axes, (B, H, W, C) -> (B*H*W, C), makes one of several.
    """

    size: int
    axis: int | None = None
    windows: tuple[_Window, ...] = ()  # several where paths with different strides met

    def seen(self, i: int) -> tuple[Fraction, Fraction]:
        """The first and last input pixel position i sees."""
        ends = [e for w in self.windows for e in w.at(i)]
        return min(ends), max(ends)

    def hull(self) -> tuple[Fraction, Fraction]:
        """The first and last input pixel any position of the part sees."""
        (lo, hi), (lo2, hi2) = self.seen(0), self.seen(self.size - 1)
        return min(lo, lo2), max(hi, hi2)

    def gather(self, size: int, offset: Number, span: Number, step: Number) -> _Part:
        """The part of an output axis of `size` whose position i reads offset + i * step ... + span of this part."""
        if self.axis is None:
            return _Part(size)
        offset, span, step = Fraction(offset), Fraction(span), Fraction(step)
        return _Part(size, self.axis, tuple(w.gather(offset, span, step) for w in self.windows))


Interval = tuple[Fraction, Fraction]


@dataclass(frozen=True)
class _State:
    dims: tuple[tuple[_Part, ...], ...]  # for each axis of the tensor, its parts, outermost first
    common: Mapping[int, Interval]  # per input axis, the pixels every value depends on (pooled, broadcast)


def _plain(shape: Sequence[int]) -> tuple[tuple[_Part, ...], ...]:
    return tuple((_Part(int(n)),) for n in shape)


def _widen(common: Mapping[int, Interval], *more: Mapping[int, Interval]) -> dict[int, Interval]:
    out = dict(common)
    for extra in more:
        for axis, (lo, hi) in extra.items():
            out[axis] = (min(lo, out[axis][0]), max(hi, out[axis][1])) if axis in out else (lo, hi)
    return out


def _hulls(parts: Sequence[_Part]) -> dict[int, Interval]:
    """What parts that are pooled, broadcast or cut up leave behind: every value sees all they saw."""
    return _widen({}, *({p.axis: p.hull()} for p in parts if p.axis is not None))


def _everything(state: _State) -> dict[int, Interval]:
    return _widen(state.common, *(_hulls(parts) for parts in state.dims))


def _flat(states: Sequence[_State], shape: Sequence[int]) -> _State:
    """A tensor whose positions no longer follow the input's: it sees all its inputs saw."""
    return _State(_plain(shape), _widen({}, *map(_everything, states)))


def _size(parts: Sequence[_Part]) -> int:
    return math.prod(p.size for p in parts)


def _spatial(parts: Sequence[_Part]) -> bool:
    return any(p.axis is not None for p in parts)


def _merge_windows(windows: Sequence[_Window]) -> tuple[_Window, ...]:
    """The union of windows on the same positions: those with the same jump make one, their hull."""
    by_jump: dict[Fraction, tuple[Fraction, Fraction]] = {}
    for w in windows:
        lo, end = w.start, w.start + w.size
        old = by_jump.get(w.jump)
        by_jump[w.jump] = (min(lo, old[0]), max(end, old[1])) if old else (lo, end)
    return tuple(_Window(lo, jump, end - lo) for jump, (lo, end) in by_jump.items())


def _union(options: Sequence[tuple[_Part, ...]], size: int) -> tuple[tuple[_Part, ...], dict[int, Interval]]:
    """One axis of a join, from its inputs' parts there: the union of their windows, and what is lost."""
    spatial = [parts for parts in options if _spatial(parts)]
    if not spatial:
        return (_Part(size),), {}
    layout = [(p.size, p.axis) for p in spatial[0]]
    if any([(p.size, p.axis) for p in parts] != layout for parts in spatial):  # x + x.transpose(2, 3)
        return (_Part(size),), _widen({}, *map(_hulls, spatial))
    return tuple(_Part(n, axis, _merge_windows([w for parts in spatial for w in parts[i].windows]))
                 for i, (n, axis) in enumerate(layout)), {}


def _combine(states: Sequence[_State | None], sources: Sequence[Sequence[tuple[int, int]]],
             shape: Sequence[int]) -> _State:
    """An output of `shape` whose axis d lines up with axes sources[d] = [(input, its axis), ...] of the
    inputs; the inputs' other axes are summed over, and an axis of size 1 against a larger one is broadcast."""
    live = [s for s in states if s is not None]
    used = {(i, k) for axis in sources for i, k in axis}
    common = _widen({}, *(s.common for s in live),
                    *(_hulls(parts) for i, s in enumerate(states) if s is not None
                      for k, parts in enumerate(s.dims) if (i, k) not in used))
    dims = []
    for d, axis in enumerate(sources):
        options = []
        for i, k in axis:
            if states[i] is None:
                continue
            parts = states[i].dims[k]
            if _size(parts) == shape[d]:
                options.append(parts)
            else:  # broadcast: every position sees what its one position saw
                common = _widen(common, _hulls(parts))
        parts, lost = _union(options, int(shape[d]))
        dims.append(parts)
        common = _widen(common, lost)
    return _State(tuple(dims), common)


def _join(states: Sequence[_State | None], shape: Sequence[int]) -> _State:
    """Elementwise, with broadcasting: each input's axes line up with the output's from the right."""
    sources = [[(i, d - (len(shape) - len(s.dims))) for i, s in enumerate(states)
                if s is not None and d - (len(shape) - len(s.dims)) >= 0] for d in range(len(shape))]
    return _combine(states, sources, shape)


def _field(state: _State, axes: int) -> Field | None:
    """The field of a tensor that has each input axis as an axis of its own, one part long; else None."""
    found: dict[int, _Part] = {}
    for parts in state.dims:
        for p in parts:
            if p.axis is not None:
                if p.axis in found or len(parts) != 1:
                    return None
                found[p.axis] = p
    if len(found) != axes:
        return None
    sizes, strides, starts = [], [], []
    for axis in range(axes):
        part = found[axis]
        # the union's length is convex in the position (a max of lines less a min of lines): largest at an end
        ends = [_widen({axis: part.seen(i)}, {axis: state.common[axis]} if axis in state.common else {})[axis]
                for i in (0, part.size - 1)]
        sizes.append(math.ceil(max(hi - lo + 1 for lo, hi in ends)))
        strides.append(_number(max(abs(w.jump) for w in part.windows)))
        starts.append(_number(ends[0][0]))
    return Field(tuple(sizes), tuple(strides), tuple(starts))


def _number(x: Fraction) -> Number:
    return int(x) if x.denominator == 1 else x


# Following the forward pass ----------------------------------------------------------------------

def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """The tensors in an argument or a result: itself, or inside lists, tuples and dicts, in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class _Follow(TorchDispatchMode):
    """Gives every tensor computed from the input its _State, operation by operation."""

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[int, tuple[torch.Tensor, _State]] = {}  # by id; the tensor kept so the id stays its own
        # a slice's id -> (the slice, its base, dim, start, step): writes into it reach the base
        self.slices: dict[int, tuple[torch.Tensor, torch.Tensor, int, int, int]] = {}

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # nothing here is compiled: saying so spares importing torch._dynamo (3 s) on the first call

    def state(self, t: torch.Tensor) -> _State | None:
        held = self.states.get(id(t))
        return held[1] if held is not None else None

    def put(self, t: torch.Tensor, state: _State | None) -> None:
        if state is None:
            self.states.pop(id(t), None)
        else:
            self.states[id(t)] = (t, state)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        call = _Call(func, _bind(func, args, kwargs), list(_tensors(out)), self)
        if call.name == "slice":
            self._note_slice(call)
        if call.outs and any(self.state(t) is not None for t in _tensors((args, kwargs))):
            for t, state in zip(call.outs, _rule(call)):
                self.put(t, state)
            if func._schema.is_mutable and call.outs[0] is args[0]:
                self._write_through(args[0], call)
        return out

    def _note_slice(self, call: _Call) -> None:
        base, view = call.args["self"], call.outs[0]
        dim = call.args["dim"] % base.dim()
        start = _clamp(call.args["start"], base.shape[dim])
        self.slices[id(view)] = (view, base, dim, start, call.args["step"])

    def _write_through(self, view: torch.Tensor, call: _Call) -> None:
        """An in-place write into a slice writes into the tensor it is a slice of (circular padding does so)."""
        src = call.args.get("src")
        if call.name == "copy_" and src is not None and self._root(src) is self._root(view):
            return  # the tensor's own pixels copied into its padding: padding, which does not count
        state = self.state(view)
        while state is not None and id(view) in self.slices:
            _, base, dim, start, step = self.slices[id(view)]  # base position i is view position (i - start) / step
            lifted = _regather(state, dim, base.shape[dim], Fraction(-start, step), 0, Fraction(1, step))
            state = _join([self.state(base), lifted], base.shape)
            self.put(base, state)
            view = base

    def _root(self, t: torch.Tensor) -> torch.Tensor:
        while id(t) in self.slices:
            t = self.slices[id(t)][1]
        return t


def _clamp(index: int | None, size: int) -> int:
    """A slice bound as torch reads it: None is 0, negative counts from the end, clipped to the axis."""
    index = 0 if index is None else index + size if index < 0 else index
    return max(0, min(size, index))


@dataclass
class _Call:
    """One aten operation as the rules see it."""

    func: Any
    args: dict[str, Any]  # by the schema's argument names, defaults filled in
    outs: list[torch.Tensor]
    follow: _Follow
    name: str = dataclasses.field(init=False)  # "convolution", "add_", "max_pool2d_with_indices"

    def __post_init__(self) -> None:
        self.name = self.func._schema.name.split("::")[-1]

    def state(self, t: Any) -> _State | None:
        return self.follow.state(t) if isinstance(t, torch.Tensor) else None

    def inputs(self) -> list[_State]:
        return [s for s in map(self.follow.state, _tensors(list(self.args.values()))) if s is not None]

    @property
    def spatial_dims(self) -> int:
        """How many trailing axes a pooling or upsampling works on: the 2 of max_pool2d."""
        found = re.search(r"([123])d", self.name)
        return int(found.group(1)) if found else 2


def _bind(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = {}
    for i, a in enumerate(func._schema.arguments):
        if i < len(args):
            bound[a.name] = args[i]
        elif a.name in kwargs:
            bound[a.name] = kwargs[a.name]
        elif a.has_default_value():
            bound[a.name] = a.default_value
    return bound


# The operations ----------------------------------------------------------------------------------

def _rule(call: _Call) -> list[_State | None]:
    name = call.name
    if name in _NO_DEPENDENCE:
        return [None] * len(call.outs)
    if _is_positionwise(call):
        return _positionwise(call)
    for names, rule in _RULES:
        if name in names:
            return rule(call)
    if re.match(r"_?upsample_", name):
        return _upsample(call)
    ins = call.inputs()
    if any(_spatial(parts) for s in ins for parts in s.dims):
        raise ArchError(f"cannot follow the receptive field through aten.{name}: archdsl does not know how it "
                        f"moves pixels")
    return [_flat(ins, t.shape) for t in call.outs]


def _is_positionwise(call: _Call) -> bool:
    """Tagged pointwise by torch, listed here, or the in-place form of a tagged one (gelu_, hardswish_)."""
    if torch.Tag.pointwise in call.func.tags or call.name in _POSITIONWISE:
        return True
    packet = getattr(torch.ops.aten, call.name[:-1], None) if call.name.endswith("_") else None
    overload = getattr(packet, call.func._overloadname, None) if packet is not None else None
    return overload is not None and (torch.Tag.pointwise in overload.tags or call.name[:-1] in _POSITIONWISE)


def _positionwise(call: _Call) -> list[_State]:
    """Each output position from the same position of its inputs (broadcast where they are smaller)."""
    shape = call.outs[0].shape
    joined = _join([call.state(t) for t in _tensors(list(call.args.values()))], shape)
    return [joined if t.shape == shape else _flat([joined], t.shape) for t in call.outs]


def _reshape(call: _Call) -> list[_State]:
    state = call.state(call.args["self"])
    return [_reshaped(state, tuple(call.outs[0].shape))]


def _reshaped(state: _State, shape: tuple[int, ...]) -> _State:
    """A view as another shape: parts regrouped row-major; a spatial part cut in two, or dropped (size 1), is lost."""
    queue = [p for parts in state.dims for p in parts]
    common = dict(state.common)
    dims: list[tuple[_Part, ...]] = []
    for n in shape:
        if n == 1:  # the next part if it has size 1, else a new axis
            dims.append((queue.pop(0),) if queue and queue[0].size == 1 else (_Part(1),))
            continue
        taken: list[_Part] = []
        while _size(taken) < n:
            need, rest = divmod(n, _size(taken))
            if not queue or rest:
                return _flat([state], shape)
            p = queue.pop(0)
            if p.size > need:  # cut: its outer piece here, the rest on to the next axes
                if p.size % need:
                    return _flat([state], shape)
                queue.insert(0, _Part(p.size // need))
                common = _widen(common, _hulls([p]))
                p = _Part(need)
            elif p.size == 1:
                common = _widen(common, _hulls([p]))
                continue
            taken.append(p)
        if _size(taken) != n:
            return _flat([state], shape)
        dims.append(tuple(taken))
    return _State(tuple(dims), _widen(common, _hulls(queue)))


def _expand(call: _Call) -> list[_State]:
    return [_join([call.state(call.args["self"])], call.outs[0].shape)]


def _permute(call: _Call) -> list[_State]:
    state = call.state(call.args["self"])
    n = len(state.dims)
    if call.name == "permute":
        order = [d % n for d in call.args["dims"]]
    else:  # transpose(dim0, dim1); t swaps the two axes of a matrix
        a, b = (call.args["dim0"] % n, call.args["dim1"] % n) if call.name == "transpose" else (0, n - 1)
        order = list(range(n))
        order[a], order[b] = order[b], order[a]
    return [_State(tuple(state.dims[d] for d in order), state.common)]


def _squeeze(call: _Call) -> list[_State]:
    state = call.state(call.args["self"])
    n = len(state.dims)
    if call.name == "unsqueeze":
        dims = list(state.dims)
        dims.insert(call.args["dim"] % (n + 1), (_Part(1),))
        return [_State(tuple(dims), state.common)]
    chosen = call.args.get("dim", call.args.get("dims"))
    chosen = range(n) if chosen is None else [chosen] if isinstance(chosen, int) else chosen
    gone = {d % n for d in chosen if _size(state.dims[d % n]) == 1}
    common = _widen(state.common, *(_hulls(state.dims[d]) for d in gone))
    return [_State(tuple(parts for d, parts in enumerate(state.dims) if d not in gone), common)]


def _select(call: _Call) -> list[_State]:
    state = call.state(call.args["self"])
    return [_without(state, call.args["dim"] % len(state.dims), call.args["index"])]


def _without(state: _State, dim: int, index: int) -> _State:
    """x[:, :, i]: the axis goes; what position i saw stays."""
    parts = state.dims[dim]
    one = parts[0] if len(parts) == 1 and parts[0].axis is not None else None
    seen = {one.axis: one.seen(index % one.size)} if one is not None else _hulls(parts)
    return _State(state.dims[:dim] + state.dims[dim + 1:], _widen(state.common, seen))


def _regather(state: _State, dim: int, size: int, offset: Number, span: Number, step: Number) -> _State:
    """One axis of `state` read as a convolution would: position i sees offset + i * step ... + span."""
    parts = state.dims[dim]
    if len(parts) != 1:  # a merged axis: its positions no longer line up with the input's
        return _State(state.dims[:dim] + ((_Part(size),),) + state.dims[dim + 1:], _widen(state.common, _hulls(parts)))
    new = parts[0].gather(size, offset, span, step)
    return _State(state.dims[:dim] + ((new,),) + state.dims[dim + 1:], state.common)


def _slice(call: _Call) -> list[_State]:
    state = call.state(call.args["self"])
    dim = call.args["dim"] % len(state.dims)
    start = _clamp(call.args["start"], _size(state.dims[dim]))
    return [_regather(state, dim, call.outs[0].shape[dim], start, 0, call.args["step"])]


def _split(call: _Call) -> list[_State]:
    """split, split_with_sizes, unbind: slices one after another along the axis."""
    state = call.state(call.args["self"])
    dim = call.args["dim"] % len(state.dims)
    if call.name == "unbind":
        return [_without(state, dim, i) for i in range(len(call.outs))]
    out, offset = [], 0
    for t in call.outs:
        out.append(_regather(state, dim, t.shape[dim], offset, 0, 1))
        offset += t.shape[dim]
    return out


def _unfold(call: _Call) -> list[_State]:
    """Tensor.unfold(dim, size, step): windows along an axis, the positions within them in a new last axis."""
    state = call.state(call.args["self"])
    dim = call.args["dimension"] % len(state.dims)
    size, step = call.args["size"], call.args["step"]
    slid = _regather(state, dim, call.outs[0].shape[dim], 0, size - 1, step)
    return [_State(slid.dims + ((_Part(size),),), slid.common)]


def _repeat(call: _Call) -> list[_State]:
    """x.repeat(...): tiles; an axis tiled more than once wraps around, so its positions are lost."""
    state = call.state(call.args["self"])
    shape = call.outs[0].shape
    new = len(shape) - len(state.dims)
    times = call.args["repeats"][new:]
    kept = tuple(parts if k == 1 else (_Part(n),) for parts, k, n in zip(state.dims, times, shape[new:]))
    lost = _widen(state.common, *(_hulls(parts) for parts, k in zip(state.dims, times) if k != 1))
    return [_State(_plain(shape[:new]) + kept, lost)]


def _flip(call: _Call) -> list[_State]:
    state = call.state(call.args["self"])
    for d in {d % len(state.dims) for d in call.args["dims"]}:
        n = _size(state.dims[d])
        state = _regather(state, d, n, n - 1, 0, -1)
    return [state]


def _cat(call: _Call) -> list[_State]:
    """Joined along an axis: elsewhere a union; along it, each input's positions where it lands."""
    tensors = [t for t in call.args["tensors"] if t.dim() != 1 or t.shape[0] != 0]  # torch skips empty 1-d ones
    shape = call.outs[0].shape
    dim = call.args["dim"] % len(shape)
    if call.name == "stack":
        return [_join([_State(s.dims[:dim] + ((_Part(1),),) + s.dims[dim:], s.common) if s is not None else None
                       for s in map(call.state, tensors)], shape)]
    moved, offset = [], 0
    for t in tensors:
        s = call.state(t)
        moved.append(_regather(s, dim, shape[dim], -offset, 0, 1) if s is not None else None)
        offset += t.shape[dim]
    return [_join(moved, shape)]


def _pad(call: _Call) -> list[_State]:
    """constant_pad_nd and the reflect and replicate pads: the last axes shift by what is added before them."""
    state = call.state(call.args["self"])
    pad = call.args["pad"] if "pad" in call.args else call.args["padding"]
    shape = call.outs[0].shape
    for i in range(len(pad) // 2):
        dim = len(shape) - 1 - i
        state = _regather(state, dim, shape[dim], -pad[2 * i], 0, 1)
    return [state]


def _slide(state: _State, shape: Sequence[int], channels: int | None,
           reads: Sequence[tuple[Number, Number, Number]]) -> _State:
    """The last len(reads) axes read as reads[i] = (offset, span, step) says; the axis before them becomes
    `channels` new channels (None: kept, as pooling keeps them)."""
    n = len(reads)
    for i, (offset, span, step) in enumerate(reads):
        dim = len(shape) - n + i
        state = _regather(state, dim, shape[dim], offset, span, step)
    if channels is not None:
        dim = len(shape) - n - 1
        state = _State(state.dims[:dim] + ((_Part(channels),),) + state.dims[dim + 1:],
                       _widen(state.common, _hulls(state.dims[dim])))
    return state


def _listed(value: Any, n: int) -> list[int]:
    """A kernel, stride or padding argument as n numbers: torch lets one stand for all."""
    values = [value] if isinstance(value, int) else list(value)
    return values * n if len(values) == 1 else values


def _convolution(call: _Call) -> list[_State]:
    a = call.args
    state = call.state(a["input"]) or _State(_plain(a["input"].shape), {})  # else only the weights are tracked
    out = call.outs[0].shape
    weight = a["weight"]
    n = weight.dim() - 2
    kernel = weight.shape[2:]
    stride, padding, dilation = (_listed(a[k], n) for k in ("stride", "padding", "dilation"))
    if a["transposed"]:  # output o reads inputs (o + p - (k - 1) d) / s ... (o + p) / s
        reads = [(Fraction(p - (k - 1) * d, s), (k - 1) * d // s, Fraction(1, s))
                 for k, s, p, d in zip(kernel, stride, padding, dilation)]
    else:
        reads = [(-p, (k - 1) * d, s) for k, s, p, d in zip(kernel, stride, padding, dilation)]
    slid = _slide(state, out, out[-n - 1], reads)
    others = [s for s in map(call.state, (weight, a.get("bias"))) if s is not None]  # weights made from the input
    return [_State(slid.dims, _widen(slid.common, *map(_everything, others)))]


def _pool(call: _Call) -> list[_State]:
    a = call.args
    n = call.spatial_dims
    kernel = _listed(a["kernel_size"], n)
    stride = _listed(a["stride"], n) if a.get("stride") else kernel  # [] means the kernel
    padding = _listed(a.get("padding", 0), n)
    dilation = _listed(a.get("dilation", 1), n)
    state = _slide(call.state(a["self"]), call.outs[0].shape, None,
                   [(-p, (k - 1) * d, s) for k, s, p, d in zip(kernel, stride, padding, dilation)])
    return [state] * len(call.outs)  # max pooling's indices too


def _adaptive(call: _Call) -> list[_State]:
    """Output i of n from m pools m*i//n ... ceil(m*(i+1)/n) - 1: a stride of m/n, the widest window kept."""
    x = call.args["self"]
    reads = []
    for m, n in zip(x.shape[-call.spatial_dims:], call.outs[0].shape[-call.spatial_dims:]):
        widest = max(-(-(i + 1) * m // n) - i * m // n for i in range(n))
        reads.append((0, widest - 1, Fraction(m, n)))
    state = _slide(call.state(x), call.outs[0].shape, None, reads)
    return [state] * len(call.outs)


def _upsample(call: _Call) -> list[_State]:
    """Output o reads input o * m / n, or the 2 (linear) or 4 (bicubic) pixels around it."""
    x = call.args.get("self", call.args.get("input"))
    taps = 4 if "bicubic" in call.name else 2 if "linear" in call.name else 1
    centred = "exact" in call.name or (taps > 1 and not call.args.get("align_corners"))
    reads = []
    for m, n in zip(x.shape[-call.spatial_dims:], call.outs[0].shape[-call.spatial_dims:]):
        step = Fraction(m - 1, n - 1) if taps > 1 and not centred and n > 1 else Fraction(m, n)
        offset = (step - 1) / 2 if centred else Fraction(0)
        reads.append((offset - (1 if taps == 4 else 0), taps - 1, step))
    return [_slide(call.state(x), call.outs[0].shape, None, reads)]


def _shuffle(call: _Call) -> list[_State]:
    """pixel_shuffle by r: output o shows input o // r; pixel_unshuffle: output o holds inputs o*r ... o*r + r - 1."""
    out = call.outs[0].shape
    if call.name == "pixel_shuffle":
        r = call.args["upscale_factor"]
        reads = [(0, 0, Fraction(1, r))] * 2
    else:
        r = call.args["downscale_factor"]
        reads = [(0, r - 1, r)] * 2
    return [_slide(call.state(call.args["self"]), out, out[-3], reads)]


def _reduce(call: _Call) -> list[_State]:
    """Reductions (mean, amax, ...) and operations along an axis (softmax, cumsum, sort, roll, topk): each
    value sees all the axis saw. An axis kept at size 1 keeps its input axis, as global pooling does."""
    state = call.state(call.args["self"])
    n = len(state.dims)
    chosen = call.args.get("dim", call.args.get("dims"))
    chosen = [chosen] if isinstance(chosen, int) else list(chosen or [])
    chosen = {d % n for d in chosen} if chosen and n else set(range(n))
    common = _widen(state.common, *(_hulls(state.dims[d]) for d in chosen))
    out = []
    for t in call.outs:
        if t.dim() != n:  # the axes reduced away
            out.append(_State(tuple(parts for d, parts in enumerate(state.dims) if d not in chosen), common))
            continue
        dims = list(state.dims)
        for d in chosen:
            if t.shape[d] == 1 and len(dims[d]) == 1 and dims[d][0].axis is not None:
                part = dims[d][0]
                (lo, hi), jump = part.hull(), max(abs(w.jump) for w in part.windows)
                dims[d] = (_Part(1, part.axis, (_Window(lo, jump * part.size, hi - lo + 1),)),)
            elif t.shape[d] != _size(dims[d]):
                dims[d] = (_Part(t.shape[d]),)
        out.append(_State(tuple(dims), common))
    return out


def _matmul(call: _Call) -> list[_State]:
    """mm, bmm, mv, their add- forms and attention: an output axis from the inputs' axes it lines up with;
    the axes summed over are seen whole."""
    a = call.args
    name = call.name.lstrip("_")
    if name.startswith("scaled_dot_product"):
        q, k, v = a["query"], a["key"], a["value"]
        tensors = [q, k, v]
        lead = [[(0, d), (1, d), (2, d)] for d in range(q.dim() - 2)]
        sources = [*lead, [(0, q.dim() - 2)], [(2, v.dim() - 1)]]
    else:
        pairs = {"mm": ("self", "mat2"), "bmm": ("self", "mat2"), "mv": ("self", "vec"), "addmm": ("mat1", "mat2"),
                 "baddbmm": ("batch1", "batch2"), "addmv": ("mat", "vec"), "addbmm": ("batch1", "batch2")}
        left, right = (a[key] for key in pairs[name])
        tensors = [left, right]
        if name in ("mm", "addmm"):
            sources = [[(0, 0)], [(1, 1)]]
        elif name in ("bmm", "baddbmm"):
            sources = [[(0, 0), (1, 0)], [(0, 1)], [(1, 2)]]
        elif name == "addbmm":
            sources = [[(0, 1)], [(1, 2)]]
        else:  # mv, addmv
            sources = [[(0, 0)]]
    out = call.outs[0].shape
    product = _combine([call.state(t) for t in tensors], sources, out)
    bias = call.state(a["self"]) if name.startswith("add") else None
    product = _join([product, bias], out) if bias is not None else product
    return [product] + [_flat([product], t.shape) for t in call.outs[1:]]


def _mix(call: _Call) -> list[_State]:
    """Gathers, scatters, im2col, grid sampling: any output may read any input position."""
    ins = call.inputs()
    x = call.args.get("self")
    if call.name.startswith("as_strided") and x is not None and call.outs[0].shape == x.shape:
        return [call.state(x)]  # as torch uses it: a result restrided in place to a memory format, same values
    return [_flat(ins, t.shape) for t in call.outs]


# Operations whose outputs do not depend on the values of their tensor inputs, only on their shapes.
_NO_DEPENDENCE = frozenset({
    "empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "randint_like", "new_empty",
    "new_empty_strided", "new_zeros", "new_ones", "new_full", "zero_", "fill_", "bernoulli_", "uniform_",
    "normal_", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "_local_scalar_dense",
})

# Position by position, as pointwise operations are, though torch does not tag them so: normalisations
# (their statistics do not count, see the module's docstring), copies, dropout.
_POSITIONWISE = frozenset({
    "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
    "_native_batch_norm_legit_functional", "native_layer_norm", "native_group_norm", "native_dropout",
    "_masked_scale", "dropout", "feature_dropout", "alpha_dropout", "clone", "_to_copy", "copy", "copy_", "detach",
    "lift_fresh", "lift_fresh_copy", "prelu", "_prelu_kernel", "hardswish", "log_sigmoid_forward",
    "rrelu_with_noise", "glu", "channel_shuffle", "native_channel_shuffle",
})

_RULES: tuple[tuple[frozenset[str], Callable[[_Call], list[_State | None]]], ...] = (
    (frozenset({"view", "_unsafe_view", "reshape", "_reshape_alias", "view_copy", "alias", "_reshape_copy"}),
     _reshape),
    (frozenset({"expand", "expand_copy", "broadcast_to"}), _expand),
    (frozenset({"permute", "transpose", "t"}), _permute),
    (frozenset({"unsqueeze", "squeeze"}), _squeeze),
    (frozenset({"select"}), _select),
    (frozenset({"slice"}), _slice),
    (frozenset({"split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "unbind"}), _split),
    (frozenset({"unfold"}), _unfold),
    (frozenset({"flip"}), _flip),
    (frozenset({"repeat"}), _repeat),
    (frozenset({"cat", "stack"}), _cat),
    (frozenset({"constant_pad_nd", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d",
                "replication_pad1d", "replication_pad2d", "replication_pad3d"}), _pad),
    (frozenset({"convolution", "_convolution", "convolution_overrideable"}), _convolution),
    (frozenset({"max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
                "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d"}), _pool),
    (frozenset({"_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"}),
     _adaptive),
    (frozenset({"pixel_shuffle", "pixel_unshuffle"}), _shuffle),
    (frozenset({"sum", "mean", "nansum", "nanmean", "amax", "amin", "max", "min", "aminmax", "prod", "var", "std",
                "var_mean", "std_mean", "logsumexp", "linalg_vector_norm", "norm", "any", "all", "argmax",
                "argmin", "count_nonzero", "median", "nanmedian", "mode", "kthvalue", "topk", "sort", "argsort",
                "_softmax", "_log_softmax", "_safe_softmax", "softmax", "log_softmax", "cumsum", "cumprod",
                "cummax", "cummin", "logcumsumexp", "roll"}), _reduce),
    (frozenset({"mm", "bmm", "mv", "addmm", "baddbmm", "addmv", "addbmm", "_scaled_dot_product_flash_attention",
                "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
                "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
                "scaled_dot_product_attention"}), _matmul),
    (frozenset({"index", "index_select", "gather", "scatter", "scatter_add", "scatter_reduce", "take",
                "masked_select", "nonzero", "im2col", "col2im", "grid_sampler_2d", "grid_sampler_3d",
                "fractional_max_pool2d", "fractional_max_pool3d", "embedding", "as_strided", "as_strided_", "index_put",
                "index_put_", "_index_put_impl_"}), _mix),
)


# The smallest input ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Smallest:
    """What `smallest_input` found."""

    shape: tuple[int, ...]  # C x sizes, without the batch: the spec traces at it
    minimal: bool  # one pixel less on any axis searched does not trace (each tried)
    traces: int  # the traces the search made
    seconds: float


SEARCH_BELOW = 8  # sizes tried below what bisection finds, where joins may accept a size and refuse the next


def min_input(plan: Plan, axes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The smallest input shape `plan` traces at: see `smallest_input`."""
    return smallest_input(plan, axes).shape


def smallest_input(plan: Plan, axes: Sequence[int] | None = None) -> Smallest:
    """The smallest input shape the spec accepts, searched by tracing it on meta at other shapes.

    `axes` are the positions in the input shape (C x H x W: 0 is the channels) to shrink, by
    default every one but the channels. Axes of the same size shrink together, so a square input
    stays square. Each group of axes is bisected; a network that is one chain of layers accepts
    every size above its smallest, so bisection finds it. Joins need their paths' sizes to agree,
    which some sizes may not do (a stride-2 convolution beside 2x2 pooling needs even sizes), and
    blocks may read the input's size: for those the SEARCH_BELOW sizes below the one found are
    tried too, and the search goes on from any that traces. A spec that traces at no smaller shape,
    or has no axes to shrink, gives its own input; one that does not trace at its own raises the ShapeError.
    """
    began = time.perf_counter()
    if plan.input_shape is None:
        raise ArchError("the spec has no input shape to shrink; add a line such as `input 1x28x28`",
                        where=plan.source.name)
    shape = tuple(plan.input_shape)
    axes = tuple(range(1, len(shape))) if axes is None else tuple(axes)
    if any(not 0 <= a < len(shape) for a in axes):
        raise ArchError(f"the axes of an input of shape {show_shape(shape)} are 0 to {len(shape) - 1}, "
                        f"not {', '.join(map(str, axes))}")
    at, again = _resizer(plan)
    trace_plan(at(shape))  # its own shape must trace: if not, that is the mistake to report
    traces = 1

    def accepts(candidate: tuple[int, ...]) -> bool:
        nonlocal traces
        traces += 1
        try:
            trace_plan(at(candidate))
        except ArchError:  # a shape error, or one the spec's arithmetic makes at that size
            return False
        return True

    below = SEARCH_BELOW if again or _may_skip_sizes(plan) else 0
    groups = [tuple(a for a in axes if shape[a] == size) for size in dict.fromkeys(shape[a] for a in axes)]
    for _ in range(len(groups)):  # shrinking one group may let another shrink further: go round again
        before = shape
        for group in groups:
            fit = _lowest(lambda n: accepts(_resized(shape, group, n)), shape[group[0]], below)
            shape = _resized(shape, group, fit)
        if shape == before:
            break
    minimal = not any(accepts(_resized(shape, (a,), shape[a] - 1)) for a in axes if shape[a] > 1)
    return Smallest(shape, minimal, traces, time.perf_counter() - began)


def _resized(shape: tuple[int, ...], axes: tuple[int, ...], size: int) -> tuple[int, ...]:
    return tuple(size if a in axes else n for a, n in enumerate(shape))


def _lowest(accepts: Callable[[int], bool], known: int, below: int) -> int:
    """The smallest size `accepts` takes, from `known`, one it does: bisection, then the `below` sizes under it."""
    while True:
        refused = 0  # the largest size known to be refused (0: none)
        while known - refused > 1:
            middle = (known + refused) // 2
            if accepts(middle):
                known = middle
            else:
                refused = middle
        lower = next((n for n in range(known - 2, max(0, known - 1 - below), -1) if accepts(n)), None)
        if lower is None:
            return known
        known = lower


def _may_skip_sizes(plan: Plan) -> bool:
    """Whether the sizes the spec accepts may have gaps: it joins paths, or a block reads its input's size."""
    def any_in(steps: tuple[Step, ...]) -> bool:
        return any(s.steps is None or any_in(s.steps) if isinstance(s, BlockStep) else bool(s.paths)
                   for s in steps)
    return any_in(plan.steps)


def _resizer(plan: Plan) -> tuple[Callable[[tuple[int, ...]], Plan], bool]:
    """The plan at another input shape, and whether it is expanded again for each. Blocks that read their
    input's size are expanded as they are traced, but a spec whose top level reads `input` (a param's default,
    a layer's argument) has the size of its input in its steps: that one is expanded again from its text,
    with its params as they were set."""
    tree = parse_source(plan.source)
    top = [st for st in tree.statements if not isinstance(st, S.BlockDef)]
    if not any(isinstance(node, S.InputRef) for node in exprs(tuple(top))):
        return lambda shape: dataclasses.replace(plan, input_shape=shape), False
    reading: set[str] = set()  # params whose default reads the input's size, itself or through another
    for st in top:
        if isinstance(st, S.ParamStmt) and any(isinstance(n, S.InputRef) or (isinstance(n, S.Name) and n.id in reading)
                                               for n in exprs(st.default)):
            reading.add(st.name)
    fixed = {name: v for name, v in plan.params.items() if name not in reading}
    again = expand(tree, fixed, plan.input_shape).params
    fixed.update({name: plan.params[name] for name in reading
                  if name in plan.params and plan.params[name] != again.get(name)})  # set by the caller
    return lambda shape: expand(tree, fixed, shape), True
