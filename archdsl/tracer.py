"""Plan -> nn.Sequential and its shape table, in one pass on the meta device.

Each module is built on `meta` and a meta tensor is run through it, so the next
input shape follows exact PyTorch semantics while no real memory is touched.
`materialize` then gives the parameters real storage and the modules' own
initialisation, drawing random numbers in the same order as a hand-written model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .errors import ArchError, ShapeError, Span, combine
from .limits import limit, raise_hint
from .measures import kernel, mult_adds, output_bytes
from .plan import TOO_DEEP, BlockStep, LayerStep, PathStep, Plan, Step
from .registry import ShapeProblem
from .summary import Row, Summary
from .values import show_shape, whole_number


def trace_plan(plan: Plan, batch: int = 1) -> tuple[nn.Sequential, Summary]:
    """Build `plan` on the meta device; return the model and its rows.

    Raises ShapeError at the first layer that cannot take its input, with the rows
    traced up to it in `error.summary`.
    """
    input_shape = batched(plan.input_shape, batch, plan.source.name)
    rows: list[Row | None] = []
    x = torch.empty(input_shape, device="meta")  # (B, C, H, W) for images
    try:
        modules, _ = _trace(plan.steps, x, "", 0, rows, ())
    except RecursionError:
        raise ArchError(TOO_DEEP, where=plan.source.name) from None
    except ShapeError as e:
        e.summary = Summary(plan.source.name, input_shape, tuple(r for r in rows if r is not None), complete=False)
        raise
    return nn.Sequential(*modules), Summary(plan.source.name, input_shape, tuple(rows))


MOST_ELEMENTS = 2 ** 61  # torch counts a tensor's bytes in 63 bits, up to 4 bytes an element here


def batched(shape: tuple[int, ...], batch: Any, where: str | None = None) -> tuple[int, ...]:
    """(batch, *shape), once the batch is a whole number from 1 and the input fits in a tensor."""
    n = whole_number(batch, "a batch size")
    if n < 1:
        raise ArchError(f"batch size must be from 1 to {limit('size'):,}, not {batch}", where=where)
    full = (n, *shape)
    if math.prod(full) >= MOST_ELEMENTS:
        raise ArchError(f"an input of shape {show_shape(full)} holds {math.prod(full):.3g} numbers, "
                        f"more than a tensor can (2^61)", where=where)
    return full


def _trace(steps: tuple[Step, ...], x: torch.Tensor, prefix: str, depth: int, rows: list[Row | None],
           callers: tuple[BlockStep, ...]) -> tuple[list[nn.Module], torch.Tensor]:
    modules: list[nn.Module] = []
    for i, step in enumerate(steps):
        name = f"{prefix}{i}"
        if len(rows) >= limit("layers"):
            raise ShapeError(f"the model unrolls to more than {limit('layers'):,} layers; check the repeat counts"
                             f"{raise_hint('layers')}", step.span, notes=_notes(callers))
        if isinstance(step, BlockStep):
            at, before = len(rows), tuple(x.shape)
            rows.append(None)  # the block's row comes before its layers; filled in once traced
            inner, x = _trace(_body(step, x, callers), x, f"{name}.", depth + 1, rows, (*callers, step))
            module = nn.Sequential(*inner)
            rows[at] = Row(at + 1, name, depth, "block", step.span.oneline, "Sequential", tuple(x.shape),
                           _inner(rows, at, depth, "params"), step.span, before, _inner(rows, at, depth, "trainable"),
                           _inner(rows, at, depth, "mult_adds"), output_bytes=output_bytes(tuple(x.shape)))
        elif step.paths:
            at, before = len(rows), tuple(x.shape)
            rows.append(None)
            inputs = _path_inputs(step, x, callers)
            paths = [_trace_path(path, torch.empty(shape, device="meta"), f"{name}.paths.{j}", depth + 1, rows, callers)
                     for j, (path, shape) in enumerate(zip(step.paths, inputs))]
            module, x = _run(step, x, callers, paths)
            text = f"{step.layer.name}({', '.join(['[…]'] * len(paths))})"  # the paths have rows of their own
            own, own_trainable = _count(module, recurse=False)
            rows[at] = Row(at + 1, name, depth, "join", text, one_line(module), tuple(x.shape),
                           own + _inner(rows, at, depth, "params"), step.span, before,
                           own_trainable + _inner(rows, at, depth, "trainable"), _inner(rows, at, depth, "mult_adds"),
                           output_bytes=output_bytes(tuple(x.shape)))
        else:
            before = tuple(x.shape)
            module, x = _run(step, x, callers)
            shown = one_line(module) if any(True for _ in module.children()) else repr(module)
            params, trainable = _count(module)
            rows.append(Row(len(rows) + 1, name, depth, "layer", step.span.oneline, shown, tuple(x.shape),
                            params, step.span, before, trainable, mult_adds(module, before, tuple(x.shape)),
                            kernel(module), output_bytes(tuple(x.shape))))
        modules.append(module)
    return modules, x


def _body(step: BlockStep, x: torch.Tensor, callers: tuple[BlockStep, ...]) -> tuple[Step, ...]:
    """A block's steps; one that reads its input's shape is expanded here, where the shape is known."""
    try:
        return step.body(tuple(x.shape[1:]))
    except ShapeError:
        raise
    except ArchError as e:  # its mistakes depend on the shape: report them with the rows traced so far
        first = ShapeError(e.message, e.span, notes=e.notes)
        raise combine([first, *e.errors[1:]], e.truncated) from None


def _path_inputs(step: LayerStep, x: torch.Tensor, callers: tuple[BlockStep, ...]) -> list[tuple[int, ...]]:
    """What each path of a join gets: the join's input, or for `split` its part of it."""
    shape = tuple(x.shape)
    if step.layer.path_inputs is None:
        return [shape] * len(step.paths)
    try:
        return step.layer.path_inputs(shape, step.args, len(step.paths))
    except ShapeProblem as e:
        raise ShapeError(f"{step.layer.name} gets {show_shape(shape)}: {e}", _span_of(step, e), notes=_notes(callers)) \
            from None


def _trace_path(path: PathStep, x: torch.Tensor, name: str, depth: int, rows: list[Row | None],
                callers: tuple[BlockStep, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """One [ path ] of a join, run on its input: its own row, then its layers."""
    at = len(rows)
    rows.append(None)
    inner, y = _trace(path.steps, x, f"{name}.", depth + 1, rows, callers)
    module = nn.Sequential(*inner)
    rows[at] = Row(at + 1, name, depth, "path", path.span.oneline, "Sequential", tuple(y.shape),
                   _inner(rows, at, depth, "params"), path.span, tuple(x.shape), _inner(rows, at, depth, "trainable"),
                   _inner(rows, at, depth, "mult_adds"), output_bytes=output_bytes(tuple(y.shape)))
    return module, tuple(y.shape)


def one_line(module: nn.Module) -> str:
    """A container's class and settings, without the children its repr would list."""
    return f"{type(module).__name__}({module.extra_repr()})"


def _notes(callers: tuple[BlockStep, ...]) -> tuple[str, ...]:
    return tuple(f"in block {b.name}, called at {b.span.at()}: {b.span.oneline}" for b in reversed(callers))


def _span_of(step: LayerStep, problem: ShapeProblem) -> Span:
    """The argument at fault where the problem names one that is written, else the whole call."""
    return step.arg_spans.get(problem.arg, step.span) if problem.arg else step.span


def _run(step: LayerStep, x: torch.Tensor, callers: tuple[BlockStep, ...],
         paths: list[tuple[nn.Module, tuple[int, ...]]] | None = None) -> tuple[nn.Module, torch.Tensor]:
    shape = tuple(x.shape)
    text = step.span.oneline if paths is None else step.layer.name  # a join: name it by what it is
    extra = () if paths is None else (paths,)  # a join's builder also gets its traced paths
    try:
        with torch.device("meta"):
            module = step.layer.build(shape, step.args, *extra)
        if step.layer.out_shape is not None:  # plain from the arguments (see LayerDef.out_shape)
            y = torch.empty(step.layer.out_shape(shape, step.args, *extra), device="meta")
        else:
            module.eval()  # shapes do not depend on the mode; some layers refuse batch 1 in training
            with torch.no_grad():
                y = module(x)
            module.train()
    except ShapeProblem as e:
        raise ShapeError(f"{text} gets {show_shape(shape)}: {e}", _span_of(step, e), notes=_notes(callers)) from None
    except (RuntimeError, ValueError, IndexError, OverflowError, TypeError) as e:  # what torch itself refuses
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShapeError(f"{text} gets {show_shape(shape)}: {reason}", step.span, notes=_notes(callers)) from None
    if any(d == 0 for d in y.shape):
        raise ShapeError(f"{text} gets {show_shape(shape)}: its output {show_shape(tuple(y.shape))} is empty", step.span,
                         notes=_notes(callers))
    return module, y


def _inner(rows: list[Row | None], at: int, depth: int, field: str) -> int:
    """A count (params, trainable, mult_adds) of the container whose row is at `at`: its children's rows', traced after it."""
    return sum(getattr(r, field) for r in rows[at + 1:] if r.depth == depth + 1)


def _count(module: nn.Module, recurse: bool = True) -> tuple[int, int]:
    """(parameters, trainable parameters)."""
    params = list(module.parameters(recurse=recurse))
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def materialize(net: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Give a meta-built model real storage on `device` and run each module's own initialisation.

    Modules are visited in definition order, so with the same seed the weights equal
    those of the same nn.Sequential written by hand. A module that initialises its
    submodules itself, in its own order (`resets_submodules`), is left to do so.
    """
    try:
        net.to_empty(device=device)
    except RuntimeError as e:  # the allocator's "can't allocate memory", or CUDA's out of memory
        size = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ArchError(f"the model's weights need {size / 2 ** 30:,.2f} GiB ({size:,} bytes) on {device}, "
                        f"which it cannot give: {reason}") from None
    skip: list[str] = []  # prefixes of submodules a parent has initialised
    with torch.no_grad():
        for name, m in net.named_modules():
            if any(name.startswith(prefix) for prefix in skip):
                continue
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
            if getattr(m, "resets_submodules", False):
                skip.append(f"{name}." if name else "")
    return net
