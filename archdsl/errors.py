"""Spans into spec text and the one error type every user mistake becomes.

An error carries the span it is about; `ArchError.render()` turns it into the
compiler-style report the CLI prints::

    specs/alexnet.arch:12:1: error: maxpool(3, 2): kernel 3 is larger than the input 2x2
       12 | maxpool(3, 2) flatten
          | ^^^^^^^^^^^^^
"""

from __future__ import annotations

import unicodedata
import functools
from dataclasses import dataclass, field
from typing import Any


ONELINE = 1000  # characters of a call quoted in a message or a row


@dataclass(frozen=True, eq=False)
class Source:
    """The text of one spec and the name it is reported under (a path or '<string>')."""

    name: str
    text: str

    def line_text(self, line: int) -> str:
        lines = self.text.split("\n")  # the parser counts only \n as a line break; so must the excerpt
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a source: 1-based line and column of its start and end (end exclusive)."""

    source: Source = field(repr=False, compare=False)
    line: int
    column: int
    end_line: int
    end_column: int
    start: int  # character offsets into source.text
    end: int

    @property
    def text(self) -> str:
        return self.source.text[self.start : self.end]

    @property
    def where(self) -> str:
        return f"{self.source.name}:{self.line}:{self.column}"

    @functools.cached_property
    def oneline(self) -> str:
        """The spanned text on one line, runs of white space as one space, at most ONELINE characters:
        how messages and the shape table quote a call. Worked out once: a repeated call has many rows."""
        return clip(" ".join(self.text[: 4 * ONELINE].split()), ONELINE)

    def cover(self, last: Span) -> Span:
        """From the start of this span to the end of `last`."""
        return Span(self.source, self.line, self.column, last.end_line, last.end_column, self.start, last.end)

    def at(self, other: Span | None = None) -> str:
        """Where this span is, said from `other`'s file: `3:7`, or `file:3:7` from another file."""
        same = other is None or other.source is self.source
        return f"{self.line}:{self.column}" if same else self.where


def first_at(first: Span, again: Span, what: str = "first given") -> tuple[str, ...]:
    """The note for a thing given twice: where the first one is."""
    return (f"{what} at {first.at(again)}",)


MAX_ERRORS = 20  # a spec with more mistakes than this is reported up to here, as compilers do


class ArchError(ValueError):
    """A mistake in a spec, a parameter or an option; `span` says where, when it is known.

    When a spec has several independent mistakes, the first one is raised and `errors`
    holds all of them (itself first), each with its own span; `render()` reports them all.
    """

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, *, notes: tuple[str, ...] = (),
                 where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.notes = notes
        self._where = where
        self.errors: tuple[ArchError, ...] = (self,)
        self.truncated = False  # True when more mistakes were found than MAX_ERRORS

    @property
    def where(self) -> str | None:
        return self.span.where if self.span else self._where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def render(self) -> str:
        """`file:line:col: error: message`, the source line and a caret under the span; each error so."""
        out = [e._render_one() for e in self.errors]
        if len(self.errors) > 1:
            out.append(f"{len(self.errors)} errors" + ("; stopped looking there, so there may be more"
                                                        if self.truncated else ""))
        return "\n".join(out)

    def _render_one(self) -> str:
        return report(self.kind, self.message, self.span, self.notes, self.where)

    def _render_traceback_(self) -> list[str]:
        """What IPython and Jupyter show for it in place of a traceback through archdsl's code: the report
        the CLI prints (with, for a ShapeError, the rows traced up to the failing layer)."""
        return [*self._shown_before(), *self.render().splitlines()]

    def _shown_before(self) -> list[str]:
        return []


def report(label: str, message: str, span: Span | None, notes: tuple[str, ...] = (), where: str | None = None) -> str:
    """`file:line:col: LABEL: message`, the source line with a caret under the span, then the notes: one
    mistake (label "error") or one warning (label "warning"). `where` stands in for a span that is not known."""
    where = span.where if span is not None else where
    head = f"{where}: {label}: {message}" if where else f"{label}: {message}"
    out = [printable(head)]
    if span is not None:
        out += _excerpt(span)
    out += [printable(f"  note: {n}") for n in notes]
    return "\n".join(out)


def combine(errors: list[ArchError], truncated: bool = False) -> ArchError:
    """One exception for several mistakes: the first, carrying all of them in `errors`."""
    first = errors[0]
    first.errors = tuple(errors)
    first.truncated = truncated
    return first


class ErrorLog:
    """Collects independent mistakes, so that one run reports them all, up to MAX_ERRORS.

    `record` keeps an error (once: a mistake in a block called twice is one mistake) and
    raises the collected ones when one more than the limit comes; `check` raises them if any.
    """

    def __init__(self) -> None:
        self.errors: list[ArchError] = []
        self._seen: set[tuple[str, int, str]] = set()
        self.stopped = False  # set when the search for mistakes ended early (a budget of work ran out)

    def record(self, error: ArchError) -> None:
        for e in error.errors:
            key = (e.span.source.name if e.span else "", e.span.start if e.span else -1, e.message)
            if key in self._seen:
                continue
            if len(self.errors) == MAX_ERRORS:
                raise combine(self.errors, truncated=True)
            self._seen.add(key)
            self.errors.append(e)

    def check(self) -> None:
        if self.errors:
            raise combine(self.errors, self.stopped)


class SpecSyntaxError(ArchError):
    """The text does not follow the grammar."""


class ShapeError(ArchError):
    """A layer cannot take the shape that reaches it. `summary` holds the rows traced before it."""

    def __init__(self, message: str, span: Span | None = None, *, summary: Any = None,
                 notes: tuple[str, ...] = ()) -> None:
        super().__init__(message, span, notes=notes)
        self.summary = summary

    def _shown_before(self) -> list[str]:
        return str(self.summary).splitlines() if self.summary is not None else []


EXCERPT_WIDTH = 100  # characters of a long line shown around the caret


def _excerpt(span: Span) -> list[str]:
    """The span's line, made safe to print and clipped around the span, with carets under the span."""
    line = span.source.line_text(span.line)
    if not line:
        return []
    start = span.column - 1
    end = span.end_column - 1 if span.end_line == span.line else len(line)
    lo, hi = 0, len(line)
    if len(line) > EXCERPT_WIDTH:  # a window around the span's start
        lo = max(0, min(start - EXCERPT_WIDTH // 3, len(line) - EXCERPT_WIDTH))
        hi = lo + EXCERPT_WIDTH
    shown = "".join(visible(c) for c in line[lo:hi])
    pad = "".join(c if c == "\t" else " " * _width(c) for c in line[lo:max(lo, start)])  # tabs keep alignment
    width = max(1, sum(_width(c) for c in line[max(lo, start):min(hi, end)]))
    gutter = f"{span.line:>5} | "
    more, less = ("…" if lo else ""), ("…" if hi < len(line) else "")
    return [gutter + more + shown.rstrip() + less, " " * (len(gutter) - 2) + "| " + " " * len(more) + pad + "^" * width]


def visible(c: str) -> str:
    """A character as it can be shown on a terminal: control and format characters as escapes."""
    if c == "\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
        return c
    return repr(c)[1:-1] if c.isascii() or ord(c) < 0x100 else f"\\u{ord(c):04x}"


def os_reason(e: Exception) -> str:
    """Why a file could not be used, in the OS's words where it gave some."""
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def clip(text: str, most: int) -> str:
    """Text for a message or a table cell, cut to `most` characters with an ellipsis."""
    return text if len(text) <= most else text[: most - 1] + "…"


def printable(text: str) -> str:
    """Text safe to print: line breaks kept, every other control character escaped."""
    return "\n".join("".join(visible(c) for c in line) for line in text.split("\n"))


def _width(c: str) -> int:
    """Columns a character takes on a terminal: 2 for wide ones (CJK), its escape's length for control ones."""
    shown = visible(c)
    if shown != c:
        return len(shown)
    if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me"):
        return 0  # an accent drawn over the character before it
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
