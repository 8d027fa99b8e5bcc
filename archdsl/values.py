"""Exact evaluation of spec expressions, and the value kinds arguments are checked against.

Numbers are Fractions, so `64 / ratio` is exact and `64 / 3` can be refused where a
whole number is needed instead of being silently floored.
"""

from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping, Union

from . import syntax as S
from .errors import ArchError, Span

Value = Union[Fraction, bool]

MAX_INT = 2**31 - 1  # sizes beyond this are typos, and some torch kernels take int32

BUILTIN_NAMES: dict[str, Value] = {"true": True, "false": False}

_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}


def show_shape(shape: tuple[int, ...]) -> str:
    """(1, 96, 54, 54), as torch prints a size; a 1-tuple without the trailing comma."""
    return "(" + ", ".join(map(str, shape)) + ")"


def did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def show(v: Any) -> str:
    """A value as a user would write it: 21.333 rather than Fraction(64, 3)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Fraction):
        if v.denominator == 1:
            return str(v.numerator)
        return f"{float(v):.6g}"
    return str(v)


def evaluate(expr: S.Expr, env: Mapping[str, Value]) -> Value:
    """Evaluate an expression; names are looked up in env, then true/false."""
    if isinstance(expr, S.Number):
        return expr.value
    if isinstance(expr, S.Name):
        if expr.id in env:
            return env[expr.id]
        if expr.id in BUILTIN_NAMES:
            return BUILTIN_NAMES[expr.id]
        known = sorted(env)
        hint = did_you_mean(expr.id, known) or (f" (known: {', '.join(known)})" if known else " (no params are declared)")
        raise ArchError(f"unknown name '{expr.id}'{hint}", expr.span)
    if isinstance(expr, S.Neg):
        return -_number(evaluate(expr.operand, env), expr.operand.span)
    if expr.op in _COMPARE:
        a, b = evaluate(expr.left, env), evaluate(expr.right, env)
        if expr.op not in ("==", "!=") or isinstance(a, bool) != isinstance(b, bool):
            a, b = _number(a, expr.left.span), _number(b, expr.right.span)
        return _COMPARE[expr.op](a, b)
    left = _number(evaluate(expr.left, env), expr.left.span)
    right = _number(evaluate(expr.right, env), expr.right.span)
    if expr.op == "+":
        return left + right
    if expr.op == "-":
        return left - right
    if expr.op == "*":
        return left * right
    if right == 0:
        raise ArchError("division by zero", expr.span)
    return left / right if expr.op == "/" else Fraction(left // right)


def _number(v: Value, span: Span) -> Fraction:
    if isinstance(v, bool):
        raise ArchError(f"expected a number, not {show(v)}", span)
    return v


def from_python(name: str, v: Any) -> Value:
    """A param value given from Python or `--set` (text), as an exact Value."""
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, Fraction)):
        return Fraction(v)
    if isinstance(v, float):
        return Fraction(repr(v))  # 0.05 means 1/20, not the nearest binary float
    if isinstance(v, str):
        text = v.strip()
        if text in BUILTIN_NAMES:
            return BUILTIN_NAMES[text]
        try:
            return Fraction(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise ArchError(f"param {name}: {v!r} is not a number or true/false")


def parse_shape(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """'1x28x28' (or (1, 28, 28)) -> (1, 28, 28): an input shape without the batch."""
    if isinstance(text, str):
        parts = text.lower().replace("×", "x").split("x")
        if not all(p.strip().isdigit() for p in parts):
            raise ArchError(f"input shape {text!r} is not of the form CxHxW, e.g. 1x28x28 (the batch is left out)")
        dims = tuple(int(p) for p in parts)
    else:
        dims = tuple(int(d) for d in text)
    if not dims or any(d < 1 for d in dims):
        raise ArchError(f"input shape {text!r} must have positive sizes, e.g. 1x28x28")
    return dims


# Kinds of argument values ---------------------------------------------------

@dataclass(frozen=True)
class Int:
    """A whole number, at least `min` (None: any)."""

    min: int | None = 1

    def convert(self, v: Value, what: str, span: Span) -> int:
        v = _number(v, span)
        if v.denominator != 1:
            raise ArchError(f"{what} must be a whole number, but {' '.join(span.text.split())} is {show(v)}", span)
        if self.min is not None and v < self.min:
            bound = "positive" if self.min == 1 else f"at least {self.min}"
            raise ArchError(f"{what} must be {bound}, not {show(v)}", span)
        if abs(v) > MAX_INT:
            raise ArchError(f"{what} is {show(v)}, more than any network can use (at most {MAX_INT:,})", span)
        return int(v)

    def describe(self) -> str:
        return {1: "positive integer", 0: "integer >= 0", None: "integer"}.get(self.min, f"integer >= {self.min}")


@dataclass(frozen=True)
class Real:
    """A number in [lo, hi) or (lo, ...) as the flags say; None means unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = True

    def convert(self, v: Value, what: str, span: Span) -> float:
        v = _number(v, span)
        too_low = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        too_high = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if too_low or too_high:
            raise ArchError(f"{what} must be {self.describe()}, not {show(v)}", span)
        return float(v)

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return "a number"


@dataclass(frozen=True)
class Bool:
    def convert(self, v: Value, what: str, span: Span) -> bool:
        if not isinstance(v, bool):
            raise ArchError(f"{what} must be true or false, not {show(v)}", span)
        return v

    def describe(self) -> str:
        return "true or false"
