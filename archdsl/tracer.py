"""Plan -> nn.Sequential and its shape table, in one pass on the meta device.

Each module is built on `meta` and a meta tensor is run through it, so the next
input shape follows exact PyTorch semantics while no real memory is touched.
`materialize` then gives the parameters real storage and the modules' own
initialisation, drawing random numbers in the same order as a hand-written model.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ArchError, ShapeError
from .plan import BlockStep, LayerStep, PathStep, Plan, Step
from .registry import ShapeProblem
from .summary import Row, Summary
from .values import show_shape


def trace_plan(plan: Plan, batch: int = 1) -> tuple[nn.Sequential, Summary]:
    """Build `plan` on the meta device; return the model and its rows.

    Raises ShapeError at the first layer that cannot take its input, with the rows
    traced up to it in `error.summary`.
    """
    if plan.input_shape is None:
        raise ArchError("the spec has no input shape; add a line such as `input 1x28x28`, or pass --input",
                        where=plan.source.name)
    if batch < 1:
        raise ArchError(f"batch size must be positive, not {batch}", where=plan.source.name)
    input_shape = (batch, *plan.input_shape)
    rows: list[Row | None] = []
    x = torch.empty(input_shape, device="meta")  # (B, C, H, W) for images
    try:
        modules, _ = _trace(plan.steps, x, "", 0, rows, ())
    except ShapeError as e:
        e.summary = Summary(plan.source.name, input_shape, tuple(r for r in rows if r is not None), complete=False)
        raise
    return nn.Sequential(*modules), Summary(plan.source.name, input_shape, tuple(rows))


def _trace(steps: tuple[Step, ...], x: torch.Tensor, prefix: str, depth: int, rows: list[Row | None],
           callers: tuple[BlockStep, ...]) -> tuple[list[nn.Module], torch.Tensor]:
    modules: list[nn.Module] = []
    for i, step in enumerate(steps):
        name = f"{prefix}{i}"
        text = " ".join(step.span.text.split())
        if isinstance(step, BlockStep):
            at = len(rows)
            rows.append(None)  # the block's row comes before its layers; filled in once traced
            inner, x = _trace(step.steps, x, f"{name}.", depth + 1, rows, (*callers, step))
            module = nn.Sequential(*inner)
            rows[at] = Row(at + 1, name, depth, "block", text, "Sequential", tuple(x.shape), _count(module), step.span)
        elif step.paths:
            at = len(rows)
            rows.append(None)
            paths = [_trace_path(path, x, f"{name}.paths.{j}", depth + 1, rows, callers)
                     for j, path in enumerate(step.paths)]
            module, x = _run(step, x, callers, paths)
            text = f"{step.layer.name}({', '.join(['[…]'] * len(paths))})"  # the paths have rows of their own
            rows[at] = Row(at + 1, name, depth, "join", text, _one_line(module), tuple(x.shape), _count(module), step.span)
        else:
            module, x = _run(step, x, callers)
            rows.append(Row(len(rows) + 1, name, depth, "layer", text, repr(module), tuple(x.shape), _count(module),
                            step.span))
        modules.append(module)
    return modules, x


def _trace_path(path: PathStep, x: torch.Tensor, name: str, depth: int, rows: list[Row | None],
                callers: tuple[BlockStep, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """One [ path ] of a join, run on the join's input: its own row, then its layers."""
    at = len(rows)
    rows.append(None)
    inner, y = _trace(path.steps, x, f"{name}.", depth + 1, rows, callers)
    module = nn.Sequential(*inner)
    text = _clip(" ".join(path.span.text.split()))
    rows[at] = Row(at + 1, name, depth, "path", text, "Sequential", tuple(y.shape), _count(module), path.span)
    return module, tuple(y.shape)


def _clip(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 2] + "…]"


def _one_line(module: nn.Module) -> str:
    """A container's class and settings, without the children its repr would list."""
    return f"{type(module).__name__}({module.extra_repr()})"


def _run(step: LayerStep, x: torch.Tensor, callers: tuple[BlockStep, ...],
         paths: list[tuple[nn.Module, tuple[int, ...]]] | None = None) -> tuple[nn.Module, torch.Tensor]:
    shape = tuple(x.shape)
    text = " ".join(step.span.text.split())
    if paths is not None:  # a join: name it by what it is, not by its whole text
        text = step.layer.name
    notes = tuple(f"in block {b.name}, called at {b.span.line}:{b.span.column}: {' '.join(b.span.text.split())}"
                  for b in reversed(callers))
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
        raise ShapeError(f"{text} gets {show_shape(shape)}: {e}", step.span, notes=notes) from None
    except (RuntimeError, ValueError, IndexError, OverflowError, TypeError) as e:  # what torch itself refuses
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShapeError(f"{text} gets {show_shape(shape)}: {reason}", step.span, notes=notes) from None
    if any(d == 0 for d in y.shape):
        raise ShapeError(f"{text} gets {show_shape(shape)}: its output {show_shape(tuple(y.shape))} is empty", step.span,
                         notes=notes)
    return module, y


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def materialize(net: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Give a meta-built model real storage on `device` and run each module's own initialisation.

    Modules are visited in definition order, so with the same seed the weights equal
    those of the same nn.Sequential written by hand.
    """
    net.to_empty(device=device)
    with torch.no_grad():
        for m in net.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return net
