"""The layer registry: each layer name maps to its argument schema and a builder.

The mechanism lives here and imports no torch; the layers themselves are in
`layers.py`. Binding call arguments to a schema is shared with blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Sequence

from .errors import ArchError, Span, first_at
from .values import TAG_WORDS, Value, did_you_mean, show

REQUIRED: Any = object()  # marks an argument with no default


class ShapeProblem(Exception):
    """Raised by a builder when the incoming shape cannot work; the tracer adds the span.

    `arg` names the argument at fault, when one is: the error then points at it.
    """

    def __init__(self, message: str, arg: str | None = None) -> None:
        super().__init__(message)
        self.arg = arg


@dataclass(frozen=True)
class Arg:
    """One argument of a layer (or a block): its name, kind, default and shorthand tag."""

    name: str
    kind: Any = None  # values.Int / Sizes / Real / Bool / Word; None for block arguments (any value)
    default: Any = REQUIRED
    tag: str | None = None
    aliases: tuple[str, ...] = ()
    shown_default: str | None = None  # how the docs show a computed default, e.g. "kernel"
    doc: str = ""
    keyword_only: bool = False  # given by name only: a number there would read as a torch habit
    many: bool = False  # takes every remaining positional argument, as a tuple: permute(0, 2, 3, 1)

    @property
    def words(self) -> tuple[str, ...]:
        return getattr(self.kind, "words", ())

    def signature(self) -> str:
        if self.many:
            return f"{self.name}..."
        if self.default is REQUIRED:
            return self.name
        d = self.shown_default if self.shown_default is not None else show(self.default)
        return f"{self.name}={d}"


@dataclass(frozen=True)
class LayerDef:
    name: str
    args: tuple[Arg, ...]
    build: Callable[..., Any]  # (in_shape with batch, args namespace[, paths]) -> nn.Module
    doc: str = ""
    takes_paths: bool = False  # joins the paths given as [ ... ] arguments
    # The output shape, from the input shape and the arguments; the tracer then does not run the
    # module on meta. Every built-in layer has one: torch's meta kernels check their arguments with
    # torch._check, whose first call imports sympy (a second of start-up for `archdsl shapes`).
    # The arithmetic of conv and pooling is checked against torch's in tests/test_startup.py.
    out_shape: Callable[..., tuple[int, ...]] | None = None
    # For a join whose paths each get a part of the input (split): (in_shape, args, n) -> one shape per path.
    path_inputs: Callable[..., list[tuple[int, ...]]] | None = None
    infers: str = ""  # what the layer works out from its input, said when a positional argument is refused

    def signature(self) -> str:
        """`conv(channels, kernel, ..., *, bias=true)`: as Python writes it, `*` before the keyword-only ones."""
        parts = ["[path]", "[path]", "..."] if self.takes_paths else []
        starred = False
        for a in self.args:
            if a.keyword_only and not starred and not any(b.many for b in self.args):
                parts.append("*")
                starred = True
            parts.append(a.signature())
        return f"{self.name}({', '.join(parts)})" if parts else self.name


REGISTRY: dict[str, LayerDef] = {}


def same_shape(x: tuple[int, ...], a: SimpleNamespace) -> tuple[int, ...]:
    """`out_shape` of an elementwise layer."""
    return x


def layer(name: str, *args: Arg, takes_paths: bool = False, out_shape: Callable[..., tuple[int, ...]] | None = None,
          path_inputs: Callable[..., list[tuple[int, ...]]] | None = None, infers: str = ""):
    """Register the decorated builder under `name`; its docstring documents the layer."""

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY:
            raise ValueError(f"layer {name!r} registered twice")
        REGISTRY[name] = LayerDef(name, args, build, (build.__doc__ or "").strip(), takes_paths, out_shape,
                                  path_inputs, infers)
        return build

    return register


@dataclass(frozen=True)
class CallArg:
    """An argument as written at a call: positional (key None), tag (key 'k'...) or keyword.

    `expr` is the syntax of its value (a tag's value for a tag); the caller of `bind`
    evaluates it, knowing the scope and the words the argument accepts.
    """

    how: str  # "positional" | "tag" | "keyword"
    key: str | None
    expr: Any
    span: Span  # the whole argument: `stride=2`
    value_span: Span | None = None  # just the value, where it differs: `2`


@dataclass
class Bound:
    values: dict[str, Any] = field(default_factory=dict)  # evaluated, not yet checked against the kinds
    spans: dict[str, Span] = field(default_factory=dict)  # where each value is written


def bind(owner: str, schema: Sequence[Arg], args: Sequence[CallArg], call_span: Span,
         value_of: Callable[[Arg, CallArg], Any], *, defaults: Bound | None = None, what: str = "layer",
         infers: str = "") -> Bound:
    """Match the arguments at a call to a schema and evaluate them with `value_of`.

    Extra, unknown, duplicate and missing arguments are errors; arguments left out are
    taken from `defaults` (a `default` statement's), where it has them.
    """
    by_name = {a.name: a for a in schema}
    by_name.update({alias: a for a in schema for alias in a.aliases})
    by_tag = {a.tag: a for a in schema if a.tag}
    positional_args = [a for a in schema if not a.keyword_only]
    bound = Bound()

    def put(arg: Arg, c: CallArg) -> None:
        if arg.name in bound.values:
            raise ArchError(f"{owner}: {arg.name} is given twice", c.span, notes=first_at(bound.spans[arg.name], c.span))
        bound.values[arg.name] = value_of(arg, c)
        bound.spans[arg.name] = c.value_span or c.span

    positional = [c for c in args if c.how == "positional"]
    for i, c in enumerate(positional):
        if i < len(positional_args) and positional_args[i].many:
            rest = positional[i:]
            bound.values[positional_args[i].name] = tuple(value_of(positional_args[i], r) for r in rest)
            bound.spans[positional_args[i].name] = rest[0].span.cover(rest[-1].span)
            break
        if i >= len(positional_args):
            raise ArchError(_too_many(owner, schema, positional_args, infers), c.span)
        put(positional_args[i], c)
    for c in args:
        if c.how == "tag":
            arg = by_tag.get(c.key)
            if arg is None:
                tags = " ".join(f"{a.tag}N ({a.name})" for a in schema if a.tag)
                has = f"; its tags are {tags}" if tags else f"; {what}s like {owner} take no tags"
                word = TAG_WORDS.get(c.key, c.key)
                raise ArchError(f"{owner} has no tag '{c.key}' ({word}){has}", c.span)
            put(arg, c)
        elif c.how == "keyword":
            arg = by_name.get(c.key)
            if arg is None:
                names = [a.name for a in schema]
                hint = did_you_mean(c.key, by_name) or (f" (its arguments: {', '.join(names)})" if names else " (it takes none)")
                raise ArchError(f"{owner} has no argument '{c.key}'{hint}", c.span)
            put(arg, c)

    if defaults is not None:
        for name, value in defaults.values.items():
            if name not in bound.values:
                bound.values[name], bound.spans[name] = value, defaults.spans[name]
    missing = [a.name for a in schema if a.default is REQUIRED and a.name not in bound.values]
    if missing:
        sig = f"{owner}(" + ", ".join(a.signature() for a in schema) + ")"
        raise ArchError(f"{owner} needs {' and '.join(missing)}: {sig}", call_span)
    return bound


def _too_many(owner: str, schema: Sequence[Arg], positional: Sequence[Arg], infers: str) -> str:
    """Why a positional argument is refused, and what to write instead."""
    if positional:
        names = ", ".join(a.name for a in positional)
        plural = "s" if len(positional) > 1 else ""
        message = f"{owner} takes at most {len(positional)} positional argument{plural} ({names})"
    else:
        message = f"{owner} takes no positional arguments" if schema else f"{owner} takes no arguments"
    if infers:
        message += f"; {infers}"
    by_name = [a for a in schema if a.keyword_only]
    if by_name:
        example = by_name[0]
        shown = example.shown_default or show(example.default)
        message += (f"; give {', '.join(a.name for a in by_name)} by name, e.g. {owner}({example.name}={shown})")
    return message


def check_layer_args(ldef: LayerDef, bound: Bound) -> SimpleNamespace:
    """Convert each bound value to its argument's kind; fill in defaults."""
    out = {}
    for a in ldef.args:
        if a.name not in bound.values:
            out[a.name] = a.default
            continue
        what, value, span = f"{ldef.name} {a.name}", bound.values[a.name], bound.spans[a.name]
        if a.many:
            items = value if isinstance(value, tuple) else (value,)
            out[a.name] = tuple(a.kind.convert(v, what, span) for v in items)
        else:
            out[a.name] = a.kind.convert(value, what, span)
    return SimpleNamespace(**out)


__all__ = ["Arg", "LayerDef", "REGISTRY", "REQUIRED", "CallArg", "Bound", "ShapeProblem", "bind", "same_shape",
           "check_layer_args", "layer", "Value"]
