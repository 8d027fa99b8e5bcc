"""Exact evaluation of spec expressions, and the value kinds arguments are checked against.

Numbers are Fractions, so `64 / ratio` is exact and `64 / 3` can be refused where a
whole number is needed instead of being silently floored. A value is a number, a
boolean, a word (`same`, `tanh`, a layer's name) or a tuple of sizes (`(1, 7)`).
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping, Union

from . import syntax as S
from .errors import ArchError, Span, clip
from .limits import limit, too_large, whole

Value = Union[Fraction, bool, str, tuple]

MAX_INT = 2**31 - 1  # sizes beyond this are typos, and some torch kernels take int32

BUILTIN_NAMES: dict[str, Value] = {"true": True, "false": False}

TAG_WORDS = {"k": "kernel", "s": "stride", "p": "padding", "d": "dilation", "g": "groups"}  # tag letter -> argument

INPUT = "input"  # the scope's key for the shape of the block's input (a keyword, so never a param's name)

_COMPARE = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}


_ARITHMETIC = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
               "//": lambda a, b: Fraction(a // b)}


def show_shape(shape: tuple[int, ...]) -> str:
    """(1, 96, 54, 54), as torch prints a size; a 1-tuple without the trailing comma."""
    return "(" + ", ".join(map(str, shape)) + ")"


def did_you_mean(name: str, choices) -> str:
    """`; did you mean 'x'?` for a likely typo of one of `choices`, else nothing.

    Only a near miss is named: a case slip, one or two letters off in a longer name, or the
    start of a longer name (`fashion` for `fashion-mnist`).
    A name that is another one plus or minus digits (`relu6`, `conv2`) names a different
    thing, not a typo, so it gets no suggestion.
    """
    choices = list(choices)
    for c in choices:
        if c.lower() == name.lower():
            return f"; did you mean '{c}'?"
    limit = 1 if len(name) <= 5 else 2
    close = [c for c in difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
             if _edits(name, c) <= limit and name.rstrip("0123456789") != c.rstrip("0123456789")]
    close += [c for c in choices if len(name) >= 4 and c.startswith(name) and not c[len(name):].isdigit()]
    return f"; did you mean '{close[0]}'?" if close else ""


def _edits(a: str, b: str) -> int:
    """Edit distance with transpositions (optimal string alignment): typos as people make them."""
    prev2, prev = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if prev2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            cur.append(cost)
        prev2, prev = prev, cur
    return prev[-1]


def show(v: Any) -> str:
    """A value as a user would write it: 21.333 rather than Fraction(64, 3)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, Fraction):
        if v.denominator == 1:
            return str(v.numerator)
        return f"{float(v):.6g}"
    if isinstance(v, tuple):
        return "(" + ", ".join(map(show, v)) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, str):
        return v
    return str(v)


def quoted(v: Any) -> str:
    """A value in a message: words in quotes, so that `not 'no'` reads as a value."""
    return f"'{v}'" if isinstance(v, str) else show(v)


# Built-in functions: name -> (fewest arguments, most (None: any), function of exact numbers).
def _round(x: Fraction) -> Fraction:
    return Fraction(round(x))  # ties to even, as Python's round


def _make_divisible(v: Fraction, divisor: Fraction, least: Fraction | None = None) -> Fraction:
    """torchvision's `_make_divisible`: the nearest multiple of `divisor`, at least `least`
    (default `divisor`), and not below 90% of `v` (MobileNet, EfficientNet, MNASNet, RegNet)."""
    least = divisor if least is None else least
    rounded = max(least, math.floor(v + divisor / 2) // divisor * divisor)
    return Fraction(rounded + divisor if rounded < Fraction(9, 10) * v else rounded)


FUNCTIONS: dict[str, tuple[int, int | None, Callable[..., Fraction]]] = {
    "min": (2, None, min),
    "max": (2, None, max),
    "abs": (1, 1, abs),
    "round": (1, 1, _round),
    "floor": (1, 1, lambda x: Fraction(math.floor(x))),
    "ceil": (1, 1, lambda x: Fraction(math.ceil(x))),
    "make_divisible": (2, 3, _make_divisible),
}

# Sizes of a block's input that `input.NAME` reads: (axis without the batch, fewest axes it needs).
INPUT_ATTRS = {"channels": (0, 1), "features": (-1, 1), "height": (-2, 3), "width": (-1, 2), "rank": (None, 1)}


def evaluate(expr: S.Expr, env: Mapping[str, Any], words: tuple[str, ...] = ()) -> Value:
    """Evaluate an expression; names are looked up in env, then true/false.

    `words` are the bare words the reader of this value accepts (`same` for a padding):
    a name that is no param or argument but one of them is that word.
    """
    if isinstance(expr, S.Number):
        return expr.value
    if isinstance(expr, S.Text):
        return expr.value
    if isinstance(expr, S.Name):
        if expr.id in env and expr.id != INPUT:
            return env[expr.id]
        if expr.id in BUILTIN_NAMES:
            return BUILTIN_NAMES[expr.id]
        if expr.id in words:
            return expr.id
        known = sorted(k for k in env if k != INPUT)
        hint = did_you_mean(expr.id, known + list(BUILTIN_NAMES) + list(words))
        if not hint and 0 < len(words) <= 10:  # a closed set of words: say which
            hint = f" (the words this argument takes: {', '.join(words)})"
        elif not hint:
            hint = f" (known: {', '.join(known)})" if known else " (no params are declared)"
        raise ArchError(f"unknown name '{expr.id}'{hint}", expr.span)
    if isinstance(expr, S.Sizes):
        return tuple(_number(evaluate(e, env), e.span) for e in expr.items)
    if isinstance(expr, S.InputRef):
        return _input_size(expr, env)
    if isinstance(expr, S.Function):
        return _call(expr, env)
    if isinstance(expr, S.Neg):
        return -_number(evaluate(expr.operand, env), expr.operand.span)
    if isinstance(expr, S.Not):
        return not _bool(evaluate(expr.operand, env), expr.operand.span)
    if expr.op in ("and", "or"):
        left = _bool(evaluate(expr.left, env), expr.left.span)
        if left == (expr.op == "or"):  # decided by the left side, as in Python
            return left
        return _bool(evaluate(expr.right, env), expr.right.span)
    if expr.op in _COMPARE:
        a, b = evaluate(expr.left, env), evaluate(expr.right, env)
        if expr.op in ("==", "!=") and not (isinstance(a, Fraction) and isinstance(b, Fraction)):
            same = type(a) is type(b) and a == b  # words, booleans, tuples: equal only to their like
            return same if expr.op == "==" else not same
        a, b = _number(a, expr.left.span), _number(b, expr.right.span)
        return _COMPARE[expr.op](a, b)
    left = _number(evaluate(expr.left, env), expr.left.span)
    right = _number(evaluate(expr.right, env), expr.right.span)
    if expr.op in ("/", "//") and right == 0:
        raise ArchError("division by zero", expr.span)
    return check_digits(_ARITHMETIC[expr.op](left, right), f"the value of {clip(expr.span.oneline, 40)}", expr.span)


def _call(expr: S.Function, env: Mapping[str, Any]) -> Fraction:
    if expr.name in TAG_WORDS:
        raise ArchError(f"{expr.name}(...) is not a tag: a tag is a letter and whole numbers, such as {expr.name}1 or "
                        f"{expr.name}1x3; to compute the value, write {TAG_WORDS[expr.name]}=...", expr.span)
    if expr.name not in FUNCTIONS:
        raise ArchError(f"unknown function '{expr.name}'{did_you_mean(expr.name, FUNCTIONS)} "
                        f"(functions: {', '.join(FUNCTIONS)})", expr.name_span)
    fewest, most, fn = FUNCTIONS[expr.name]
    n = len(expr.args)
    if n < fewest or (most is not None and n > most):
        count = f"{fewest} to {most}" if most not in (fewest, None) else f"{fewest}" + (" or more" if most is None else "")
        raise ArchError(f"{expr.name} takes {count} argument{'s' if count != '1' else ''}, not {n}", expr.span)
    args = [_number(evaluate(a, env), a.span) for a in expr.args]
    if expr.name == "make_divisible" and any(a <= 0 for a in args[1:]):
        raise ArchError("make_divisible needs a positive divisor (and least value)", expr.span)
    return check_digits(fn(*args), f"the value of {clip(expr.span.oneline, 40)}", expr.span)


def _input_size(expr: S.InputRef, env: Mapping[str, Any]) -> Fraction:
    if expr.attr not in INPUT_ATTRS:
        raise ArchError(f"input has no size '{expr.attr}'{did_you_mean(expr.attr, INPUT_ATTRS)} "
                        f"(it has {', '.join(INPUT_ATTRS)})", expr.attr_span)
    shape = env.get(INPUT)
    if shape is None:
        raise ArchError(f"input.{expr.attr} needs the input shape, and the spec has none; add a line such as "
                        f"`input 1x28x28`, or pass --input (input_shape= in Python)", expr.span)
    axis, rank = INPUT_ATTRS[expr.attr]
    if len(shape) < rank:
        raise ArchError(f"input.{expr.attr} needs an input of at least {rank} axes without the batch, "
                        f"but it is {show_shape(shape)}", expr.span)
    return Fraction(len(shape) if axis is None else shape[axis])


def _number(v: Value, span: Span) -> Fraction:
    if not isinstance(v, Fraction):
        raise ArchError(f"expected a number, not {quoted(v)}", span)
    return v


def _bool(v: Value, span: Span) -> bool:
    if not isinstance(v, bool):
        raise ArchError(f"expected true or false, not {quoted(v)}", span)
    return v


def from_python(name: str, v: Any) -> Value:
    """A param value given from Python or `--set` (text), as an exact Value."""
    if isinstance(v, bool):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        raise ArchError(f"param {name}: {v!r} is not a finite number")
    if isinstance(v, (int, Fraction, float)):
        exact = Fraction(repr(v)) if isinstance(v, float) else Fraction(v)  # 0.05 means 1/20, not the nearest float
        return check_digits(exact, f"param {name}")
    if isinstance(v, str):
        text = v.strip()
        if text in BUILTIN_NAMES:
            return BUILTIN_NAMES[text]
        exponent = re.search(r"[eE]([-+]?[0-9]+)$", text)
        if len(text) > limit("digits") or (exponent and abs(int(exponent.group(1))) > limit("digits")):
            raise ArchError(f"param {name}: {clip(text, 40)} has more than {limit('digits')} digits, more than a "
                            f"number a network needs")
        if text.isascii():  # Fraction would take other scripts' digits, which a spec does not
            try:
                exact = Fraction(text)
            except (ValueError, ZeroDivisionError):
                exact = None
            if exact is not None:
                return check_digits(exact, f"param {name}")
    raise ArchError(f"param {name}: {clip(repr(v), 60)} is not a number or true/false")


def check_digits(v: Fraction, what: str, span: Span | None = None) -> Fraction:
    """An exact number, refused once its numerator or denominator passes the digits limit.

    Beyond it Python's arithmetic and printing slow without end (a param squared 22 times
    has millions of digits); no size, rate or ratio a network needs comes near it.
    """
    most = limit("digits")
    if max(v.numerator.bit_length(), v.denominator.bit_length()) > most * _BITS_PER_DIGIT:
        raise ArchError(f"{what} has more than {most} digits, more than a number a network needs", span)
    return v


_BITS_PER_DIGIT = math.log2(10)


def parse_shape(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """'1x28x28' (or (1, 28, 28)) -> (1, 28, 28): an input shape without the batch."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.lower().replace("×", "x").split("x")]
        if not all(re.fullmatch("[0-9]+", p) for p in parts):
            raise ArchError(f"input shape {clip(repr(text), 60)} is not of the form CxHxW, e.g. 1x28x28 "
                            f"(the batch is left out)")
        if any(too_large(p) for p in parts):
            raise ArchError(f"input shape {clip(text, 60)}: a size above {limit('size'):,} is too large to be meant")
        dims = tuple(whole(p) for p in parts)
    else:
        dims = tuple(whole_number(d, "an input size") for d in _items(text))
    if not dims or any(d < 1 for d in dims):
        raise ArchError(f"input shape {show_shape(dims)} must have positive sizes, e.g. 1x28x28")
    return dims


def _items(shape: Any) -> tuple[Any, ...]:
    if not isinstance(shape, (tuple, list)):
        raise ArchError(f"an input shape is text such as '1x28x28' or a tuple such as (1, 28, 28), "
                        f"not a {type(shape).__name__}")
    return tuple(shape)


def whole_number(v: Any, what: str) -> int:
    """A whole number given from Python (an int or anything indexable as one: numpy's), within the size limit."""
    try:
        n = operator.index(v) if not isinstance(v, bool) else None
    except TypeError:
        n = None
    if n is None:
        raise ArchError(f"{what} must be a whole number, not {clip(repr(v), 40)} (a {type(v).__name__})")
    if n > limit("size"):
        raise ArchError(f"{what} above {limit('size'):,} is too large to be meant")
    return n


# Kinds of argument values ---------------------------------------------------
#
# Each kind converts an evaluated Value to what a builder gets, or raises an ArchError at
# the value's span. `words` are the bare words it accepts besides values of its kind.

def _one_of(words: tuple[str, ...]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _word(v: Value, words: tuple[str, ...], what: str, expected: str, span: Span) -> str | None:
    """`v` if it is one of `words`; an error if it is some other word; None if it is no word."""
    if not isinstance(v, str):
        return None
    if v in words:
        return v
    hint = did_you_mean(v, words)
    accepted = expected if not words else f"{expected} or {_one_of(words)}" if expected else _one_of(words)
    raise ArchError(f"{what} must be {accepted}, not '{v}'{hint}", span)


@dataclass(frozen=True)
class Int:
    """A whole number, at least `min` (None: any)."""

    min: int | None = 1
    words: tuple[str, ...] = ()

    def convert(self, v: Value, what: str, span: Span) -> int | str:
        word = _word(v, self.words, what, self.describe(), span)
        if word is not None:
            return word
        return _whole(v, self.min, what, span)

    def describe(self) -> str:
        return {1: "positive integer", 0: "integer >= 0", None: "integer"}.get(self.min, f"integer >= {self.min}")


def _whole(v: Value, least: int | None, what: str, span: Span) -> int:
    if isinstance(v, tuple):
        raise ArchError(f"{what} takes one number here, not {show(v)}", span)
    v = _number(v, span)
    if v.denominator != 1:
        raise ArchError(f"{what} must be a whole number, but {span.oneline} is {show(v)}", span)
    if least is not None and v < least:
        bound = "positive" if least == 1 else f"at least {least}"
        raise ArchError(f"{what} must be {bound}, not {show(v)}", span)
    if abs(v) > MAX_INT:
        raise ArchError(f"{what} is {show(v)}, more than any network can use (at most {MAX_INT:,})", span)
    return int(v)


@dataclass(frozen=True)
class Sizes:
    """A size per axis: one whole number for every axis (`3`), or a tuple of them (`(1, 7)`).

    Windows (kernel, stride, padding) take these; the builder checks the tuple's length
    against the input's spatial axes, which only the traced shape knows.
    """

    min: int = 1
    words: tuple[str, ...] = ()

    def convert(self, v: Value, what: str, span: Span) -> int | tuple[int, ...] | str:
        word = _word(v, self.words, what, self.describe(), span)
        if word is not None:
            return word
        if isinstance(v, tuple):
            if not v:
                raise ArchError(f"{what} needs at least one size", span)
            return tuple(_whole(x, self.min, what, span) for x in v)
        return _whole(v, self.min, what, span)

    def describe(self) -> str:
        return ("positive integer" if self.min == 1 else f"integer >= {self.min}") + " or a tuple of them"


@dataclass(frozen=True)
class Real:
    """A number in [lo, hi) or (lo, ...) as the flags say; None means unbounded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = True
    words: tuple[str, ...] = ()

    def convert(self, v: Value, what: str, span: Span) -> float | str:
        word = _word(v, self.words, what, self.describe(), span)
        if word is not None:
            return word
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
    words: tuple[str, ...] = ()

    def convert(self, v: Value, what: str, span: Span) -> bool:
        if not isinstance(v, bool):
            raise ArchError(f"{what} must be true or false, not {quoted(v)}", span)
        return v

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Word:
    """One of a closed set of words: `approximate=tanh`."""

    words: tuple[str, ...]

    def convert(self, v: Value, what: str, span: Span) -> str:
        word = _word(v, self.words, what, "", span) if isinstance(v, str) else None
        if word is None:
            raise ArchError(f"{what} must be {_one_of(self.words)}, not {quoted(v)}", span)
        return word

    def describe(self) -> str:
        return _one_of(self.words)
