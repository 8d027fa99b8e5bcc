"""Text -> syntax tree. The grammar lives in grammar.lark; the parser is built once."""

from __future__ import annotations

import functools
import os
import re
import stat
from fractions import Fraction
from pathlib import Path as FsPath
from typing import Iterator

from lark import Lark, Token, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.visitors import Transformer_NonRecursive

from . import syntax as S
from .cache import user_cache_dir
from .errors import ArchError, ErrorLog, Source, Span, SpecSyntaxError, clip, os_reason
from .limits import LIMITS, limit, raise_hint, too_large, whole
from .values import did_you_mean


_OPEN = {"LPAR", "LSQB", "LBRACE"}
_CLOSE = {"RPAR", "RSQB", "RBRACE"}


class _TooDeep(Exception):
    """Brackets opened past the nesting limit, at this token."""

    def __init__(self, tok: Token) -> None:
        self.tok = tok


class _JoinLines:
    """Post-lexer: drop line breaks inside brackets, so only top-level statements end at one."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth, most = 0, limit("nesting")
        for tok in stream:
            if tok.type in _OPEN:
                depth += 1
                if depth > most:  # refused before the parser builds a tree that deep
                    raise _TooDeep(tok)
            elif tok.type in _CLOSE:
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth:
                continue
            yield tok


@functools.cache
def _lark() -> Lark:
    return Lark.open(
        "grammar.lark", rel_to=__file__, parser="lalr", lexer="contextual",
        postlex=_JoinLines(), propagate_positions=True, maybe_placeholders=True, cache=_tables_file(),
    )


_MOST_TABLES_BYTES = 4 * 2**20  # the tables take ~50 KB; anything much larger is not lark's file


def _tables_file() -> str | bool:
    """Where lark keeps the parser tables it builds from the grammar (~0.2 s of each start-up).

    A file in the per-user cache ($XDG_CACHE_HOME/archdsl, or ~/.cache/archdsl). Lark keys it
    by the grammar's text, the options and lark's and Python's versions, and builds the
    tables again when any differs or the file does not load; a cache it cannot write (read-only,
    a full disk) only costs the build. False (no cache) where there is no such folder, or where
    something other than a plain file of a plausible size is in the way: lark would read it whole.
    """
    folder = user_cache_dir()
    if not folder.is_absolute():  # a relative $XDG_CACHE_HOME (XDG says to ignore it), or no home: no cache
        return False
    path = str(folder / "grammar.lark-cache")
    try:
        os.makedirs(folder, exist_ok=True)
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except (OSError, ValueError):  # a file where the folder goes, no permission, a NUL in the name
        return False
    return path if stat.S_ISREG(st.st_mode) and st.st_size <= _MOST_TABLES_BYTES else False


def source_of(spec: str | os.PathLike[str]) -> Source:
    """Read a spec file, or wrap spec text given directly.

    A path object, or a one-word string that looks like a path (it names something that
    exists, holds a '/', or ends in an extension such as `.arch`), is a file; any other
    string is spec text.
    """
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and _looks_like_path(spec)):
        return Source(str(spec), read_spec(FsPath(spec), str(spec)))
    if not isinstance(spec, str):
        raise TypeError(f"a spec is a path or spec text, not {type(spec).__name__}")
    return Source("<string>", spec.removeprefix(_BOM))


_BOM = "\ufeff"  # what Windows editors put before UTF-8 text


def _looks_like_path(text: str) -> bool:
    if not text.strip() or any(c.isspace() or c in ";()[]{}=," for c in text):
        return False
    try:
        exists = os.path.lexists(text)
    except (ValueError, OSError):  # a NUL byte, a name too long: not a file that exists
        exists = False
    return exists or "/" in text or os.sep in text or re.search(r"\.[A-Za-z]\w*$", text) is not None


def read_spec(path: FsPath, name: str, span: Span | None = None) -> str:
    """The text of a spec file or an included one: a regular file, UTF-8, of bounded size.

    A pipe or device is refused rather than read (it may never end); a leading
    byte-order mark is dropped. Errors are located at `span` (an include) or name the file.
    """
    where = None if span is not None else name
    subject, about = (f"{name} ", f" {name}") if span is not None else ("", "")  # an include names its file
    most = limit("spec_chars")
    try:
        mode = path.stat().st_mode
        if stat.S_ISREG(mode):  # non-blocking: a kernel file such as /proc/kmsg says regular, then waits
            with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
                data = f.read(4 * most + 4)  # UTF-8 takes at most 4 bytes a character
    except FileNotFoundError:
        raise ArchError(f"no such spec file{about}{_nearby(path)}", span, where=where) from None
    except (OSError, ValueError, RuntimeError) as e:  # unreadable, a NUL in the name, a symlink loop
        raise ArchError(f"cannot read{about}: {os_reason(e)}", span, where=where) from None
    if stat.S_ISDIR(mode):
        raise ArchError(f"{subject}is a directory, not a spec file", span, where=where)
    if not stat.S_ISREG(mode):
        raise ArchError(f"{subject}is not a regular file (a pipe, socket or device); archdsl reads spec files",
                        span, where=where)
    if len(data) > 4 * most:
        raise _too_long(name, span)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ArchError(f"{subject}is not UTF-8 text (byte {e.start})", span, where=where) from None
    return check_size(text.removeprefix(_BOM), name, span)


def _nearby(path: FsPath) -> str:
    """`; did you mean 'mlp.arch'?` for a mistyped file name beside it."""
    try:
        names = [p.name for p in path.parent.iterdir() if p.suffix == ".arch"][:1000]
    except (OSError, ValueError):
        return ""
    return did_you_mean(path.name, names)


def check_size(text: str, name: str, span: Span | None = None) -> str:
    """Refuse spec text longer than the limit before parsing it: parsing takes time in proportion."""
    if len(text) > limit("spec_chars"):
        raise _too_long(name, span)
    return text


def _too_long(name: str, span: Span | None) -> ArchError:
    return ArchError(f"{'the spec' if span is None else name} is longer than {limit('spec_chars'):,} characters, "
                     f"the most archdsl reads{raise_hint('spec_chars')}", span, where=None if span else name)


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
    text = check_size(source.text, source.name)
    budget = _RECOVERY_BUDGET  # characters parsed again after errors, so many errors in a long spec stay quick
    while True:
        try:
            tree = _lark().parse(text)
        except UnexpectedInput as e:
            error = _syntax_error(e, source)
            log.record(error)
            at_end = isinstance(e, UnexpectedEOF) or (isinstance(e, UnexpectedToken) and e.token.type == "$END")
            start, end = _statement_around(text, error.span.start)
            blanked = text[:start] + "".join(c if c == "\n" else " " for c in text[start:end]) + text[end:]
            budget -= len(text)
            if budget < 0:
                log.stopped = True
            if at_end or blanked == text or budget < 0:
                break
            text = blanked
            continue
        except _TooDeep as e:
            log.record(SpecSyntaxError(_TOO_DEEP, _point(source, e.tok.start_pos, 1)))
            break
        log.check()
        _check_nesting(tree, source)
        transformer = _ToSyntax(source)
        spec = transformer.transform(tree)
        transformer.log.check()
        return spec
    log.check()
    raise AssertionError("unreachable: the loop ends with an error")  # pragma: no cover


_RECOVERY_BUDGET = 100_000

# Rules that nest: a bracket (arguments, a path, a repeat, a choice, a tuple, a function's
# arguments, a block's body) or an operator. What follows the parse recurses once per level.
_NESTS = {"arg_list", "path_arg", "group", "choice", "tuple", "function", "block_def",
          "add", "sub", "mul", "div", "floordiv", "neg", "not_", "and_", "or_", "compare"}


_TOO_DEEP = (f"this nests more than {LIMITS['nesting'].value} levels deep (brackets and operators within one "
             f"another); give a part of it a name, as a block or a param")


def _check_nesting(tree: Tree, source: Source) -> None:
    """Refuse a spec nested deeper than the limit, at the first place it goes too deep."""
    most = limit("nesting")
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        depth += node.data in _NESTS
        if depth > most:
            raise SpecSyntaxError(_TOO_DEEP, _span(source, node.meta))
        stack += [(c, depth) for c in reversed(node.children) if isinstance(c, Tree)]


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
class _ToSyntax(Transformer_NonRecursive):
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
        if any(too_large(d) for d in shape.split("x")):
            self.log.record(SpecSyntaxError(f"input {clip(shape, 40)}: a size above {limit('size'):,} is too large "
                                            f"to be meant", self.sp(meta)))
            return S.InputStmt((1,), self.sp(meta))
        return S.InputStmt(tuple(whole(d) for d in shape.split("x")), self.sp(meta))

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
        if any(too_large(d) for d in sizes):
            self.log.record(SpecSyntaxError(f"tag {clip(tok, 40)} is too large to be meant", self.sp(meta)))
            sizes = ["1"] * len(sizes)
        value = tuple(whole(d) for d in sizes)
        return S.Tag(tok[0], value[0] if len(value) == 1 else value, self.sp(meta))

    def path_arg(self, meta, path):
        return S.PathArg(path, self.sp(meta))

    def number(self, meta, tok):
        mantissa, _, exponent = str(tok).lower().partition("e")
        if len(mantissa) > 30 or (exponent and (len(exponent) > 4 or abs(int(exponent)) > 30)):
            self.log.record(SpecSyntaxError(f"number {clip(tok, 40)} is out of range: a number in a spec has at most "
                                            f"30 digits and an exponent from -30 to 30", self.sp(meta)))
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
