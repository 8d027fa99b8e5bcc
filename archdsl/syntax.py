"""The syntax tree: what the spec says, exactly as written, each node with its span.

Nothing here is evaluated or checked beyond the grammar; `plan.py` does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Union

from .errors import Source, Span


# Expressions ---------------------------------------------------------------

@dataclass(frozen=True)
class Number:
    value: Fraction  # exact: 0.05 is 1/20, not a binary float
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class Text:
    """A quoted string: `"same"`. A bare word such as `same` is a Name until a layer's argument reads it."""

    value: str
    span: Span


@dataclass(frozen=True)
class Sizes:
    """`(1, 7)`: sizes per axis, for windows that are not square."""

    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * / // == != < <= > >= and or
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Not:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Function:
    """`max(1, c // 4)`: one of the built-in functions of values."""

    name: str
    args: tuple[Expr, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class InputRef:
    """`input.channels`: a size of the input of the enclosing block (of the spec, at top level)."""

    attr: str
    span: Span
    attr_span: Span


Expr = Union[Number, Name, Text, Sizes, BinOp, Neg, Not, Function, InputRef]


# Layer paths ---------------------------------------------------------------

@dataclass(frozen=True)
class Positional:
    value: Expr
    span: Span


@dataclass(frozen=True)
class Keyword:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class Tag:
    """Tagged shorthand such as `k11` (letter 'k', value 11) or `k1x7` (value (1, 7))."""

    letter: str
    value: int | tuple[int, ...]
    span: Span


@dataclass(frozen=True)
class PathArg:
    """A bracketed path passed as an argument, for layers that join paths."""

    path: Path
    span: Span


Arg = Union[Positional, Keyword, Tag, PathArg]


@dataclass(frozen=True)
class Call:
    """`name` or `name(args)`: a layer or a block."""

    name: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Group:
    """`[ path ]`, `[ path ] * count`, or `[ path ] * count as i` (the body sees i = 0, 1, ...)."""

    path: Path
    count: Expr | None
    index: str | None
    span: Span


@dataclass(frozen=True)
class Choice:
    """`if cond [ path ] else [ path ]`: one path or the other, chosen when the spec is expanded."""

    condition: Expr
    then: Path
    otherwise: Path | None
    span: Span


Item = Union[Call, Group, Choice]


@dataclass(frozen=True)
class Path:
    items: tuple[Item, ...]
    span: Span


# Statements ----------------------------------------------------------------

@dataclass(frozen=True)
class InputStmt:
    dims: tuple[int, ...]  # C x H x W, batch excluded
    span: Span


@dataclass(frozen=True)
class IncludeStmt:
    """`include resnet` (a sibling file or the standard library) or `include "path/blocks.arch"`."""

    target: str
    quoted: bool  # a "path" rather than a name
    span: Span


@dataclass(frozen=True)
class ParamStmt:
    name: str
    default: Expr | None
    span: Span
    name_span: Span


@dataclass(frozen=True)
class TrainOption:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True)
class TrainStmt:
    dataset: str
    options: tuple[TrainOption, ...]
    span: Span
    dataset_span: Span


@dataclass(frozen=True)
class DefaultStmt:
    """`default conv(bias=false)`: arguments for every call of a layer in the spec or the block."""

    layer: str
    args: tuple[Arg, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class ParamDecl:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[ParamDecl, ...]
    defaults: tuple[DefaultStmt, ...]
    body: Path
    span: Span
    name_span: Span


@dataclass(frozen=True)
class LayersStmt:
    items: tuple[Item, ...]
    span: Span


Statement = Union[InputStmt, IncludeStmt, ParamStmt, TrainStmt, DefaultStmt, BlockDef, LayersStmt]


@dataclass(frozen=True)
class Spec:
    statements: tuple[Statement, ...]
    source: Source
