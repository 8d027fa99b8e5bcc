"""Text -> syntax tree. The grammar lives in grammar.lark; the parser is built once."""

from __future__ import annotations

import functools
import os
import re
from fractions import Fraction
from pathlib import Path as FsPath
from typing import Iterator

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import syntax as S
from .errors import ArchError, ErrorLog, Source, Span, SpecSyntaxError


_OPEN = {"LPAR", "LSQB", "LBRACE"}
_CLOSE = {"RPAR", "RSQB", "RBRACE"}


class _JoinLines:
    """Post-lexer: drop line breaks inside brackets, so only top-level statements end at one."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            if tok.type in _OPEN:
                depth += 1
            elif tok.type in _CLOSE:
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


@functools.cache
def _lark() -> Lark:
    return Lark.open(
        "grammar.lark", rel_to=__file__, parser="lalr", lexer="contextual",
        postlex=_JoinLines(), propagate_positions=True, maybe_placeholders=True,
    )


def source_of(spec: str | os.PathLike[str]) -> Source:
    """Read a spec file, or wrap spec text given directly.

    A path object, or a one-word string that names a file or a directory or ends in
    `.arch`, is a file; any other string is spec text.
    """
    if isinstance(spec, os.PathLike) or (
        isinstance(spec, str) and spec.strip() and not any(c in spec for c in " \t\n;()[]{}")
        and (spec.endswith(".arch") or os.path.exists(spec))
    ):
        path = FsPath(spec)
        try:
            return Source(str(spec), path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArchError("no such spec file", where=str(spec)) from None
        except IsADirectoryError:
            raise ArchError("is a directory, not a spec file", where=str(spec)) from None
        except UnicodeDecodeError as e:
            raise ArchError(f"not UTF-8 text (byte {e.start})", where=str(spec)) from None
        except OSError as e:
            raise ArchError(f"cannot read: {e.strerror}", where=str(spec)) from None
    if not isinstance(spec, str):
        raise TypeError(f"a spec is a path or spec text, not {type(spec).__name__}")
    return Source("<string>", spec)


def parse(spec: str | os.PathLike[str]) -> S.Spec:
    """Parse a spec file or spec text into its syntax tree (no evaluation, no torch)."""
    return parse_source(source_of(spec))


def parse_source(source: Source) -> S.Spec:
    """Parse one source; every syntax error in it is reported (up to MAX_ERRORS), not just the first.

    After an error the parser blanks the statement it stopped in (line breaks kept, so
    every later position stays where it was) and parses again, as compilers resynchronise
    at the next statement.
    """
    log = ErrorLog()
    text = source.text
    while True:
        try:
            tree = _lark().parse(text)
        except UnexpectedInput as e:
            error = _syntax_error(e, source)
            log.record(error)
            at_end = isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END")
            start, end = _statement_around(text, error.span.start)
            blanked = text[:start] + "".join(c if c == "\n" else " " for c in text[start:end]) + text[end:]
            if at_end or blanked == text:
                break
            text = blanked
            continue
        except RecursionError:
            log.record(SpecSyntaxError("the spec nests brackets too deeply", where=source.name))
            break
        log.check()
        transformer = _ToSyntax(source)
        try:
            spec = transformer.transform(tree)
        except (RecursionError, VisitError) as e:  # lark wraps a RecursionError in a method in VisitError
            if isinstance(e, VisitError) and not isinstance(e.orig_exc, RecursionError):
                raise
            raise SpecSyntaxError("the spec nests brackets too deeply", where=source.name) from None
        transformer.log.check()
        return spec
    log.check()
    raise AssertionError("unreachable: the loop ends with an error")  # pragma: no cover


def _statement_around(text: str, pos: int) -> tuple[int, int]:
    """The top-level statement holding `pos`: from the line break or ';' before it to the one after.

    Brackets are counted (outside comments and strings), so a statement spanning lines
    is one; an unclosed bracket makes it run to the end.
    """
    depth, start, i, n = 0, 0, 0, len(text)
    while i < n:
        c = text[i]
        if c == "#":
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        if c == '"':
            close = text.find('"', i + 1)
            line_end = text.find("\n", i + 1)
            i = close + 1 if close >= 0 and (line_end < 0 or close < line_end) else i + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
        elif c in "\n;" and depth == 0:
            if i >= pos:
                return start, i
            start = i + 1
        i += 1
    return start, n


# Tree -> syntax nodes: one thin method per grammar rule ---------------------

def _span(source: Source, m) -> Span:
    return Span(source, m.line, m.column, m.end_line, m.end_column, m.start_pos, m.end_pos)


@v_args(meta=True, inline=True)
class _ToSyntax(Transformer):
    """One thin method per grammar rule. A value too large to be meant is logged, not raised,
    so that every such mistake of a spec is reported at once."""

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.src = source
        self.log = ErrorLog()

    def sp(self, m) -> Span:
        return _span(self.src, m)

    def start(self, meta, *statements):
        return S.Spec(tuple(statements), self.src)

    def input_stmt(self, meta, shape):
        if any(len(d) > 9 for d in shape.split("x")):
            self.log.record(SpecSyntaxError(f"input {shape} is too large to be meant", self.sp(meta)))
        return S.InputStmt(tuple(int(d[:9]) for d in shape.split("x")), self.sp(meta))

    def include_stmt(self, meta, target):
        quoted = target.type == "STRING"
        return S.IncludeStmt(str(target)[1:-1] if quoted else str(target), quoted, self.sp(meta))

    def param_stmt(self, meta, name, default):
        return S.ParamStmt(str(name), default, self.sp(meta), self.sp(name))

    def train_stmt(self, meta, dataset, *options):
        return S.TrainStmt(str(dataset), options, self.sp(meta), self.sp(dataset))

    def option(self, meta, name, value):
        return S.TrainOption(str(name), value, self.sp(meta))

    def default_stmt(self, meta, name, args):
        return S.DefaultStmt(str(name), args or (), self.sp(meta), self.sp(name))

    def block_def(self, meta, name, params, *rest):
        *defaults, body = rest
        return S.BlockDef(str(name), params or (), tuple(defaults), body, self.sp(meta), self.sp(name))

    def param_list(self, meta, *decls):
        return decls

    def param_decl(self, meta, name, default):
        return S.ParamDecl(str(name), default, self.sp(meta))

    def layers_stmt(self, meta, *items):
        return S.LayersStmt(items, self.sp(meta))

    def path(self, meta, *items):
        return S.Path(items, self.sp(meta))

    def call(self, meta, name, args):
        return S.Call(str(name), args or (), self.sp(meta), self.sp(name))

    def group(self, meta, path, count, index):
        return S.Group(path, count, str(index) if index is not None else None, self.sp(meta))

    def choice(self, meta, condition, then, otherwise):
        return S.Choice(condition, then, otherwise, self.sp(meta))

    def arg_list(self, meta, *args):
        return args

    def positional(self, meta, value):
        return S.Positional(value, self.sp(meta))

    def keyword(self, meta, name, value):
        return S.Keyword(str(name), value, self.sp(meta))

    def tag(self, meta, tok):
        sizes = tok[1:].split("x")
        if any(len(d) > 9 for d in sizes):
            self.log.record(SpecSyntaxError(f"tag {tok} is too large to be meant", self.sp(meta)))
        value = tuple(int(d[:9]) for d in sizes)
        return S.Tag(tok[0], value[0] if len(value) == 1 else value, self.sp(meta))

    def path_arg(self, meta, path):
        return S.PathArg(path, self.sp(meta))

    def number(self, meta, tok):
        mantissa, _, exponent = str(tok).lower().partition("e")
        if len(mantissa) > 30 or (exponent and (len(exponent) > 4 or abs(int(exponent)) > 30)):
            self.log.record(SpecSyntaxError(f"number {tok} is too large to be meant", self.sp(meta)))
            return S.Number(Fraction(1), self.sp(meta))
        return S.Number(Fraction(str(tok)), self.sp(meta))

    def name(self, meta, tok):
        return S.Name(str(tok), self.sp(meta))

    def text(self, meta, tok):
        return S.Text(str(tok)[1:-1], self.sp(meta))

    def tuple(self, meta, *items):
        return S.Sizes(tuple(e for e in items if e is not None), self.sp(meta))

    def function(self, meta, name, *args):
        return S.Function(str(name), tuple(a for a in args if a is not None), self.sp(meta), self.sp(name))

    def input_ref(self, meta, attr):
        return S.InputRef(str(attr), self.sp(meta), self.sp(attr))

    def compare(self, meta, left, op, right):
        return S.BinOp(str(op), left, right, self.sp(meta))

    def neg(self, meta, operand):
        return S.Neg(operand, self.sp(meta))

    def not_(self, meta, operand):
        return S.Not(operand, self.sp(meta))

    def _binop(op: str):  # noqa: N805 - builds the methods below
        def method(self, meta, left, right):
            return S.BinOp(op, left, right, self.sp(meta))
        return method

    add, sub, mul, div, floordiv = _binop("+"), _binop("-"), _binop("*"), _binop("/"), _binop("//")
    and_, or_ = _binop("and"), _binop("or")
    del _binop


# Syntax errors in words -----------------------------------------------------

_WORDS = {
    "NAME": "a name", "NUMBER": "a number", "TAG": "a tag such as k3",
    "COMPARE": "a comparison", "SHAPE": "a shape such as 1x28x28", "DATASET": "a dataset name", "STRING": 'a "quoted path"',
    "_NL": "a line break", "$END": "the end of the spec",
}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "_FLOORDIV", "COMPARE"}
_VALUE_START = {"NAME", "NUMBER", "STRING", "LPAR", "MINUS", "PLUS", "INPUT", "NOT"}


def _describe_terminal(name: str) -> str:
    if name in _WORDS:
        return _WORDS[name]
    try:
        pattern = _lark().get_terminal(name).pattern
    except KeyError:
        return name
    return f"'{pattern.value}'" if pattern.type == "str" else name.lower()


def _expected(names: set[str]) -> str:
    names = set(names)
    if names - _OPERATORS and len(names) > 3:
        names -= _OPERATORS  # "expected ',' or ')'" helps more than a list of operators
    extra = set()
    if {"NAME", "NUMBER"} <= names:  # the tokens that can start a value, in one word
        names -= _VALUE_START
        extra = {"a value"}
        if {"TAG", "LSQB"} <= names:
            names -= {"TAG", "LSQB"}
            extra = {"an argument"}
    words = sorted({_describe_terminal(n) for n in names} | extra)
    if not words:
        return ""
    if len(words) == 1:
        return f"; expected {words[0]}"
    return "; expected " + ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(tok: Token) -> str:
    if tok.type == "$END":
        return "end of the spec"
    if tok.type == "_NL":
        return "';'" if tok.value.startswith(";") else "line break"
    kind = {"NAME": "name", "NUMBER": "number", "TAG": "tag"}.get(tok.type)
    return f"{kind} '{tok.value}'" if kind else f"'{tok.value}'"


def _point(source: Source, pos: int, width: int) -> Span:
    pos = max(0, min(pos, len(source.text)))
    line = source.text.count("\n", 0, pos) + 1
    column = pos - (source.text.rfind("\n", 0, pos) + 1) + 1
    return Span(source, line, column, line, column + max(width, 1), pos, pos + max(width, 1))


def _lacks(text: str, expected: set[str]) -> str:
    """What to write instead, where the text is a construct of another language (Python, torch)."""
    if re.fullmatch(r"[0-9]+(x[0-9]+)+", text):
        return f"; a window of several sizes is a tag, k{text}, or a tuple, kernel=({text.replace('x', ', ')})"
    if text == "[" and {"NAME", "NUMBER"} <= set(expected):
        return "; sizes per axis are a tuple, (1, 7); [ ... ] is a path, which joins such as concat take"
    if text == "=" and "_NL" in expected:
        return "; there are no assignments: declare a value with param NAME = value"
    if text == ".":
        return "; names have no dots: call layers by their archdsl names (conv, linear, ...); input.channels and " \
               "its kin are the only dotted names"
    if text == "'":
        return '; quote words with double quotes, "same", or leave them bare'
    return ""


def _syntax_error(e: UnexpectedInput, source: Source) -> SpecSyntaxError:
    if isinstance(e, UnexpectedToken) and e.token.type == "$END" or isinstance(e, UnexpectedEOF):
        expected = e.expected if isinstance(e, UnexpectedEOF) else (e.accepts or e.expected)
        end = len(source.text.rstrip())
        return SpecSyntaxError("unexpected end of the spec" + _expected(set(expected)), _point(source, end, 1))
    if isinstance(e, UnexpectedToken):
        tok = e.token
        width = 1 if tok.type == "_NL" else len(tok.value)
        expected = e.accepts or e.expected  # accepts: what the parser state takes, not the lexer
        return SpecSyntaxError(f"unexpected {_describe_token(tok)}" + _expected(expected) + _lacks(tok.value, expected),
                               _point(source, tok.start_pos, width))
    if isinstance(e, UnexpectedCharacters):
        char = source.text[e.pos_in_stream]
        return SpecSyntaxError(f"unexpected character {char!r}" + _lacks(char, set()),
                               _point(source, e.pos_in_stream, 1))
    return SpecSyntaxError(str(e))  # pragma: no cover - lark raises only the kinds above
