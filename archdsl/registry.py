"""The layer registry: each layer name maps to its argument schema and a builder.

The mechanism lives here and imports no torch; the layers themselves are in
`layers.py`. Binding call arguments to a schema is shared with blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from .errors import ArchError, Span
from .values import Value, did_you_mean, show

REQUIRED: Any = object()  # marks an argument with no default


class ShapeProblem(Exception):
    """Raised by a builder when the incoming shape cannot work; the tracer adds the span."""

TAG_WORDS = {"k": "kernel", "s": "stride", "p": "padding", "d": "dilation", "g": "groups"}


@dataclass(frozen=True)
class Arg:
    """One argument of a layer (or a block): its name, kind, default and shorthand tag."""

    name: str
    kind: Any = None  # values.Int / Real / Bool; None for block arguments (any value)
    default: Any = REQUIRED
    tag: str | None = None
    aliases: tuple[str, ...] = ()
    shown_default: str | None = None  # how the docs show a computed default, e.g. "kernel"
    doc: str = ""

    def signature(self) -> str:
        if self.default is REQUIRED:
            return self.name
        d = self.shown_default if self.shown_default is not None else show(self.default)
        return f"{self.name}={d}"


@dataclass(frozen=True)
class LayerDef:
    name: str
    args: tuple[Arg, ...]
    build: Callable[..., Any]  # (in_shape with batch, args namespace) -> nn.Module
    doc: str = ""
    takes_paths: bool = False  # joins the paths given as [ ... ] arguments
    # The output shape, where it follows from the input shape and the arguments by definition
    # (elementwise layers, linear, joins); the tracer then does not run the module on meta.
    # Conv and pooling, whose arithmetic is subtle, always run. (torch's meta kernels for relu,
    # batch norm, cat, ... import torch._dynamo: a second of start-up for `archdsl shapes`.)
    out_shape: Callable[..., tuple[int, ...]] | None = None

    def signature(self) -> str:
        parts = (["[path]", "[path]", "..."] if self.takes_paths else []) + [a.signature() for a in self.args]
        return f"{self.name}({', '.join(parts)})" if parts else self.name


REGISTRY: dict[str, LayerDef] = {}


def same_shape(x: tuple[int, ...], a: SimpleNamespace) -> tuple[int, ...]:
    """`out_shape` of an elementwise layer."""
    return x


def layer(name: str, *args: Arg, takes_paths: bool = False,
          out_shape: Callable[..., tuple[int, ...]] | None = None):
    """Register the decorated builder under `name`; its docstring documents the layer."""

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY:
            raise ValueError(f"layer {name!r} registered twice")
        REGISTRY[name] = LayerDef(name, args, build, (build.__doc__ or "").strip(), takes_paths, out_shape)
        return build

    return register


@dataclass(frozen=True)
class Given:
    """An argument as written at a call: positional (key None), tag (key 'k'...) or keyword."""

    how: str  # "positional" | "tag" | "keyword"
    key: str | None
    value: Any
    span: Span  # the whole argument: `stride=2`
    value_span: Span | None = None  # just the value, where it differs: `2`


@dataclass
class Bound:
    values: dict[str, Any] = field(default_factory=dict)
    spans: dict[str, Span] = field(default_factory=dict)  # where each value is written


def bind(owner: str, schema: Sequence[Arg], given: Sequence[Given], call_span: Span,
         *, what: str = "layer") -> Bound:
    """Match the arguments at a call to a schema; report extra, unknown, duplicate and missing ones."""
    by_name = {a.name: a for a in schema}
    by_name.update({alias: a for a in schema for alias in a.aliases})
    by_tag = {a.tag: a for a in schema if a.tag}
    bound = Bound()

    def put(arg: Arg, g: Given) -> None:
        if arg.name in bound.values:
            first = bound.spans[arg.name]
            raise ArchError(f"{owner}: {arg.name} is given twice", g.span,
                            notes=(f"first given at {first.line}:{first.column}",))
        bound.values[arg.name] = g.value
        bound.spans[arg.name] = g.value_span or g.span

    positional = 0
    for g in given:
        if g.how == "positional":
            if positional >= len(schema):
                names = ", ".join(a.name for a in schema)
                limit = f"takes at most {len(schema)} positional arguments ({names})" if schema else "takes no arguments"
                raise ArchError(f"{owner} {limit}", g.span)
            put(schema[positional], g)
            positional += 1
        elif g.how == "tag":
            arg = by_tag.get(g.key)
            if arg is None:
                tags = " ".join(f"{a.tag}N ({a.name})" for a in schema if a.tag)
                has = f"; its tags are {tags}" if tags else f"; {what}s like {owner} take no tags"
                word = TAG_WORDS.get(g.key, g.key)
                raise ArchError(f"{owner} has no tag '{g.key}' ({word}){has}", g.span)
            put(arg, g)
        else:
            arg = by_name.get(g.key)
            if arg is None:
                names = [a.name for a in schema]
                hint = did_you_mean(g.key, by_name) or (f" (its arguments: {', '.join(names)})" if names else " (it takes none)")
                raise ArchError(f"{owner} has no argument '{g.key}'{hint}", g.span)
            put(arg, g)

    missing = [a.name for a in schema if a.default is REQUIRED and a.name not in bound.values]
    if missing:
        sig = f"{owner}(" + ", ".join(a.signature() for a in schema) + ")"
        raise ArchError(f"{owner} needs {' and '.join(missing)}: {sig}", call_span)
    return bound


def check_layer_args(ldef: LayerDef, bound: Bound) -> SimpleNamespace:
    """Convert each bound value to its argument's kind; fill in defaults."""
    out = {}
    for a in ldef.args:
        if a.name in bound.values:
            out[a.name] = a.kind.convert(bound.values[a.name], f"{ldef.name} {a.name}", bound.spans[a.name])
        else:
            out[a.name] = a.default
    return SimpleNamespace(**out)


__all__ = ["Arg", "LayerDef", "REGISTRY", "REQUIRED", "Given", "Bound", "ShapeProblem", "bind", "same_shape",
           "check_layer_args", "layer", "Value"]
