"""The bounds on the work a spec may ask for, so that no input hangs or exhausts memory.

Each is counted on what is actually read or built, and reaching one is a located error
that names it. Those a real network might outgrow can be raised by an environment
variable; the others guard Python itself (its recursion, its big-number arithmetic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import ArchError


@dataclass(frozen=True)
class Limit:
    value: int
    env: str | None  # the environment variable that raises it; None where raising it is never needed
    why: str
    most: int = 0  # the highest the environment variable may set it to


LIMITS = {
    # lark parses ~30 KB a second here: 64 KiB is ~2 s, 17 times the largest spec in specs/
    "spec_chars": Limit(65_536, "ARCHDSL_MAX_SPEC_CHARS", "characters in a spec file", 16 * 2 ** 20),
    # brackets and operators inside one another within a statement; real specs use under 10
    "nesting": Limit(64, None, "levels of brackets and operators within one another"),
    # blocks, joins, repeats and choices unrolled within one another; ResNets use 4
    "depth": Limit(64, None, "blocks, joins and repeats unrolled within one another"),
    # layers the spec unrolls to: ResNet-1001 has ~4,000 rows; 5,000 convolutions trace in ~3 s here
    "layers": Limit(5_000, "ARCHDSL_MAX_LAYERS", "layers", 1_000_000),
    # syntax nodes of the items unrolled, each time, layers or not (an empty repeat, a long argument
    # list in a repeat); inception_v3 takes ~6,000
    "expansions": Limit(200_000, None, "steps to unroll"),
    # one size of a shape (an input axis, a batch, a kernel): a billion is more than any axis holds
    "size": Limit(999_999_999, None, "a size"),
    # digits of an exact number (a float holds up to 309); past it, Python's arithmetic slows without end
    "digits": Limit(300, None, "digits in a number"),
}


def limit(name: str) -> int:
    """The limit in force: the environment variable's value where it is set, else the default."""
    lim = LIMITS[name]
    raw = os.environ.get(lim.env, "").strip() if lim.env else ""
    if not raw:
        return lim.value
    if not raw.isascii() or not raw.isdigit() or too_big(raw, lim.most) or int(raw) < 1:
        raise ArchError(f"${lim.env} must be a whole number of {lim.why} from 1 to {lim.most:,}, not {raw[:40]!r}",
                        notes=(f"unset it to use the default, {lim.value:,}",))
    return int(raw)


def too_large(digits: str) -> bool:
    """Whether a size written in digits passes the size limit."""
    return too_big(digits, limit("size"))


def too_big(digits: str, most: int) -> bool:
    """Whether a number written in digits is above `most`, counted before converting a long run of digits."""
    digits = digits.lstrip("0") or "0"
    return len(digits) > len(str(most)) or int(digits) > most


def whole(digits: str) -> int:
    """The value of a run of digits already found not too large; leading zeros cannot pass Python's digit limit."""
    return int(digits.lstrip("0") or "0")


def raise_hint(name: str) -> str:
    """How to raise a limit, for the end of its message; empty where it is fixed."""
    lim = LIMITS[name]
    return f" (set {lim.env} to raise it)" if lim.env else ""
