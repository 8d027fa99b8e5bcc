"""Spans into spec text and the one error type every user mistake becomes.

An error carries the span it is about; `ArchError.render()` turns it into the
compiler-style report the CLI prints::

    specs/alexnet.arch:12:1: error: maxpool(3, 2): kernel 3 is larger than the input 2x2
       12 | maxpool(3, 2) flatten
          | ^^^^^^^^^^^^^
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, eq=False)
class Source:
    """The text of one spec and the name it is reported under (a path or '<string>')."""

    name: str
    text: str

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


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


class ArchError(ValueError):
    """A mistake in a spec, a parameter or an option; `span` says where, when it is known."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, *, notes: tuple[str, ...] = (),
                 where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.notes = notes
        self._where = where

    @property
    def where(self) -> str | None:
        return self.span.where if self.span else self._where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def render(self) -> str:
        """`file:line:col: error: message`, the source line and a caret under the span."""
        head = f"{self.where}: {self.kind}: {self.message}" if self.where else f"{self.kind}: {self.message}"
        out = [head]
        if self.span is not None:
            out += _excerpt(self.span)
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)


class SpecSyntaxError(ArchError):
    """The text does not follow the grammar."""


class ShapeError(ArchError):
    """A layer cannot take the shape that reaches it. `summary` holds the rows traced before it."""

    def __init__(self, message: str, span: Span | None = None, *, summary: Any = None,
                 notes: tuple[str, ...] = ()) -> None:
        super().__init__(message, span, notes=notes)
        self.summary = summary


def _excerpt(span: Span) -> list[str]:
    line = span.source.line_text(span.line)
    if not line:
        return []
    end = span.end_column if span.end_line == span.line else len(line) + 1
    width = max(1, end - span.column)
    gutter = f"{span.line:>5} | "
    pad = "".join(c if c == "\t" else " " for c in line[: span.column - 1])  # keep tabs aligned
    return [gutter + line.rstrip(), " " * (len(gutter) - 2) + "| " + pad + "^" * width]
