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
class BinOp:
    op: str  # one of + - * / // == != < <= > >=
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


Expr = Union[Number, Name, BinOp, Neg]


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
    """Tagged shorthand such as `k11`: letter 'k', value 11."""

    letter: str
    value: int
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
    """`[ path ]` or `[ path ] * count`."""

    path: Path
    count: Expr | None
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
class ParamDecl:
    name: str
    default: Expr | None
    span: Span


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[ParamDecl, ...]
    body: Path
    span: Span
    name_span: Span


@dataclass(frozen=True)
class LayersStmt:
    items: tuple[Item, ...]
    span: Span


Statement = Union[InputStmt, IncludeStmt, ParamStmt, TrainStmt, BlockDef, LayersStmt]


@dataclass(frozen=True)
class Spec:
    statements: tuple[Statement, ...]
    source: Source
