"""The Python API: parse, trace and build a spec. The CLI is a thin layer over these.

torch is imported only once a spec has been read without mistakes: `tracer` is imported
inside `trace` and `build`, so a syntax or spec error is reported without it (~2 s).

`trace` also takes any nn.Module, or a reference to one (`torchvision:resnet50`,
`package.module:name`), and gives its table the same way (see torchmodule.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Union

from . import syntax as S
from .errors import ArchError
from .parser import parse
from .plan import Plan, expand
from .summary import Summary
from .values import parse_shape

if TYPE_CHECKING:
    from torch import nn

    from .stepmemory import StepMemory

SpecLike = Union[str, "os.PathLike[str]", S.Spec]
ShapeLike = Union[str, tuple[int, ...], list[int], None]
ModelLike = Union[SpecLike, "nn.Module"]  # a spec, a module, or a reference to one


def _is_module(spec: object) -> bool:
    """An nn.Module, or a reference to one: `package.module:name`, dotted Python names around one colon.

    The grammar has no colon outside strings and comments, so no spec text reads as a reference;
    a file of that name, or a name ending in .arch, is a spec file all the same.
    """
    if isinstance(spec, str):
        module, colon, attr = spec.partition(":")
        return (bool(colon) and all(n.isidentifier() for n in (*module.split("."), *attr.split(".")))
                and not spec.endswith(".arch") and not os.path.lexists(spec))
    torch = sys.modules.get("torch")  # without torch imported, nothing is an nn.Module
    return torch is not None and isinstance(spec, torch.nn.Module)


def _named(spec: object) -> str:
    return spec if isinstance(spec, str) else type(spec).__name__


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


def trace(spec: ModelLike, input_shape: ShapeLike = None, *, batch: int = 1, depth: int | None = None,
          flops: bool = False, receptive_field: bool = False, params: Mapping[str, Any] | None = None,
          **more_params: Any) -> Summary:
    """The rows `archdsl shapes` prints: each layer's shapes, parameters and mult-adds.

    Runs on the meta device: no real tensors are allocated, whatever the input size.
    `input_shape` (C x H x W, e.g. (1, 28, 28) or "1x28x28") replaces the spec's
    `input`; keyword arguments set the spec's params (`ratio=4`; a param named like one of
    trace's own arguments goes in `params={...}`). `depth` hides nested rows in the display;
    `flops` counts FLOPs with torch's flop counter and `receptive_field` works out each row's
    receptive field and effective stride (each costs a forward pass on meta, ~1 s the first time).
    A spec's warnings (see lint.py) are in `summary.warnings`.

    `spec` may also be an nn.Module or a reference to one (`"torchvision:resnet50"`,
    `"package.module:name"`): its forward is traced on a meta copy, one row per module
    call; `input_shape` is then required and there are no params.
    """
    if depth is not None and (not isinstance(depth, int) or depth < 0):
        raise ArchError(f"depth is a level of nesting from 0 (blocks collapsed), not {depth!r}")
    net, summary = traced(spec, input_shape, batch, {**(params or {}), **more_params})
    if flops:
        from .measures import count_flops

        summary = summary.filled(flops=count_flops(net, summary.input_shape))
    if receptive_field:
        from .receptive import receptive_fields

        fields = {name: field for name, field in receptive_fields(net, summary.input_shape[1:]).items() if field}
        summary = summary.filled(receptive_field={name: f.size for name, f in fields.items()},
                                 stride={name: f.stride for name, f in fields.items()})
    return replace(summary, depth=depth)


def traced(spec: ModelLike, input_shape: ShapeLike, batch: int, params: dict[str, Any]) -> tuple[nn.Module, Summary]:
    """The network built on meta and its rows, with the spec's warnings: what trace and the memory estimate share."""
    if _is_module(spec):
        if params:
            raise ArchError(f"{_named(spec)} is a module, which has no params to set; "
                            f"{next(iter(params))}= (--set) is for a spec's params")
        from .torchmodule import trace_module  # torch: a module needs it

        return trace_module(spec, input_shape, batch)
    resolved = _traceable(spec, input_shape, params)
    from .lint import lint  # torch, now that the spec is known to be sound
    from .tracer import trace_plan

    net, summary = trace_plan(resolved, batch)
    return net, replace(summary, warnings=tuple(lint(net, summary, input_span=resolved.input_span)))


def build(spec: SpecLike, input_shape: ShapeLike = None, **params: Any) -> nn.Sequential:
    """Compile a spec into a plain nn.Sequential with initialised parameters on the CPU.

    `spec` is a path to a .arch file or spec text; the other arguments are as for `trace`.
    Raises ArchError (a ValueError) with the place in the spec for any mistake; a module,
    or a reference to one, has nothing to compile and is refused.
    """
    if _is_module(spec):
        raise ArchError(f"{_named(spec)} is a module already: build compiles a spec into one "
                        f"(trace takes modules, for their shapes)")
    resolved = _traceable(spec, input_shape, params)
    from .tracer import materialize, trace_plan  # torch, now that the spec is known to be sound

    net, _ = trace_plan(resolved)
    return materialize(net, "cpu")


def step_memory(spec: ModelLike, input_shape: ShapeLike = None, *, batch: int = 1, amp: bool = False,
                optimizer: str = "sgd", device: str = "cpu", params: Mapping[str, Any] | None = None,
                **more_params: Any) -> StepMemory:
    """The peak memory of one training step at `batch`, estimated without allocating (see stepmemory.py).

    `amp`: bf16 autocast; `optimizer`: sgd, momentum (SGD with momentum) or adamw; `device`: cpu
    or cuda (no GPU needed). The other arguments are as for `trace`.
    """
    from .stepmemory import estimate_step

    net, summary = traced(spec, input_shape, batch, {**(params or {}), **more_params})
    return estimate_step(net, summary.input_shape, amp=amp, optimizer=optimizer, device=device)


def largest_batch(spec: ModelLike, budget: int | str, input_shape: ShapeLike = None, *, amp: bool = False,
                  optimizer: str = "sgd", device: str = "cpu", params: Mapping[str, Any] | None = None,
                  **more_params: Any) -> int:
    """The largest batch whose training step fits in `budget` ("16GiB", or bytes); 0 if batch 1 does not."""
    from .memory import parse_size
    from .stepmemory import largest_batch as search

    bytes_ = parse_size(budget, "budget") if isinstance(budget, str) else budget
    if not isinstance(bytes_, int) or bytes_ < 1:
        raise ArchError(f"budget takes a memory size such as '16GiB', or a number of bytes from 1; got {budget!r}")
    net, summary = traced(spec, input_shape, 1, {**(params or {}), **more_params})
    return search(net, summary.input_shape[1:], bytes_, amp=amp, optimizer=optimizer, device=device)


def min_input(spec: SpecLike, params: Mapping[str, Any] | None = None, **more_params: Any) -> tuple[int, ...]:
    """The smallest input (C x H x W, channels kept) the spec traces at: one pixel less on any axis does not."""
    if _is_module(spec):
        raise ArchError(f"{_named(spec)} is a module: the smallest input is searched for a spec, whose layers say "
                        f"what they accept; trace the module at the sizes you want instead")
    resolved = _traceable(spec, None, {**(params or {}), **more_params})
    from .receptive import min_input as smallest

    return smallest(resolved)
