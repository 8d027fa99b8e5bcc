"""The Python API: parse, trace and build a spec. The CLI is a thin layer over these.

torch is imported only once a spec has been read without mistakes: `tracer` is imported
inside `trace` and `build`, so a syntax or spec error is reported without it (~2 s).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Union

from . import syntax as S
from .errors import ArchError
from .parser import parse
from .plan import Plan, expand
from .summary import Summary
from .values import parse_shape

if TYPE_CHECKING:
    from torch import nn

SpecLike = Union[str, "os.PathLike[str]", S.Spec]
ShapeLike = Union[str, tuple[int, ...], list[int], None]


def plan(spec: SpecLike, input_shape: ShapeLike = None, **params: Any) -> Plan:
    """Parse and resolve a spec: params set, blocks and repeats unrolled, every argument checked."""
    tree = spec if isinstance(spec, S.Spec) else parse(spec)
    return expand(tree, params, parse_shape(input_shape) if input_shape is not None else None)


def _traceable(spec: SpecLike, input_shape: ShapeLike, params: dict[str, Any]) -> Plan:
    """The plan, refused before torch is imported when it has no input shape to trace with."""
    resolved = plan(spec, input_shape, **params)
    if resolved.input_shape is None:
        raise ArchError("the spec has no input shape; add a line such as `input 1x28x28`, or pass --input "
                        "(input_shape= in Python)", where=resolved.source.name)
    return resolved


def trace(spec: SpecLike, input_shape: ShapeLike = None, *, batch: int = 1, **params: Any) -> Summary:
    """The rows `archdsl shapes` prints: each layer's output shape and parameter count.

    Runs on the meta device: no real tensors are allocated, whatever the input size.
    `input_shape` (C x H x W, e.g. (1, 28, 28) or "1x28x28") replaces the spec's
    `input`; keyword arguments set the spec's params (`ratio=4`).
    """
    resolved = _traceable(spec, input_shape, params)
    from .tracer import trace_plan  # torch, now that the spec is known to be sound

    return trace_plan(resolved, batch)[1]


def build(spec: SpecLike, input_shape: ShapeLike = None, **params: Any) -> nn.Sequential:
    """Compile a spec into a plain nn.Sequential with initialised parameters on the CPU.

    `spec` is a path to a .arch file or spec text; the other arguments are as for `trace`.
    Raises ArchError (a ValueError) with the place in the spec for any mistake.
    """
    resolved = _traceable(spec, input_shape, params)
    from .tracer import materialize, trace_plan  # torch, now that the spec is known to be sound

    net, _ = trace_plan(resolved)
    return materialize(net, "cpu")
