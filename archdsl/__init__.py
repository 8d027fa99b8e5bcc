"""archdsl: write a network as text, get a plain torch nn.Sequential, see every shape.

    import archdsl
    net = archdsl.build("specs/alexnet.arch")            # nn.Sequential
    print(archdsl.trace("specs/vgg.arch", ratio=4))      # the shape table
    tree = archdsl.parse("conv(6, k5, p2) sigmoid")     # the syntax tree

Importing archdsl is cheap: the parser (lark) is imported on first use of parse, build or
trace, torch on first use of build, trace or train; `archdsl --help` needs neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ArchError, ShapeError, SpecSyntaxError

__version__ = "0.1.0"

__all__ = ["ArchError", "ShapeError", "SpecSyntaxError", "Summary", "build", "diff", "largest_batch", "min_input",
           "parse", "step_memory", "trace", "train"]

if TYPE_CHECKING:
    from .api import build, largest_batch, min_input, step_memory, trace
    from .diff import diff
    from .parser import parse
    from .summary import Summary
    from .trainer import train

_LAZY = {"build": "api", "trace": "api", "step_memory": "api", "largest_batch": "api", "min_input": "api",
         "diff": "diff", "parse": "parser", "Summary": "summary", "train": "trainer"}


def __getattr__(name: str) -> Any:  # PEP 562: import lark and torch only when they are needed
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'archdsl' has no attribute {name!r}")
