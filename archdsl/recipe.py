"""The training recipe's keys, defaults and ranges: one table that flags, a spec's `train` line,
config.json and checkpoints are all checked against.

The ranges are wide; they exist so that a mistyped value is one clear message instead of an
overflow deep in torch (a seed beyond 64 bits) or in matplotlib (10^20 epochs on an axis).
Whether a batch or an image size fits the machine is the memory check's business
(archdsl/memory.py), not a range's.
"""

from __future__ import annotations

import math
from typing import Any

from .plan import DATASETS

# Recipe values used when neither the spec's `train` line nor a flag gives one.
DEFAULTS: dict[str, Any] = {"dataset": "fashion-mnist", "batch_size": 256, "lr": 0.1, "epochs": 10,
                            "resize": None, "seed": 0, "limit": None, "init": "xavier"}
# The recipe decides the numbers: a resumed run keeps it (only `epochs` may grow).
RECIPE_KEYS = tuple(DEFAULTS)
INITS = ("xavier", "keep")
FLAGS = {"dataset": "--dataset", "batch_size": "--batch-size", "lr": "--lr", "epochs": "--epochs",
         "resize": "--resize", "seed": "--seed", "limit": "--limit", "init": "--init"}
# How messages name each key, and a value that works.
NAMES = {"dataset": "dataset", "batch_size": "batch size", "lr": "lr", "epochs": "epochs", "resize": "resize",
         "seed": "seed", "limit": "limit", "init": "init"}
EXAMPLES = {"dataset": "fashion-mnist", "batch_size": "256", "lr": "0.1", "epochs": "10", "resize": "224",
            "seed": "0", "limit": "1000", "init": "xavier"}

# Whole-number keys: (least, most). Epochs: a million 2-second epochs is 23 days. Batch size: far
# beyond any data set here (Fashion-MNIST has 60,000 images). Resize: above any image a device holds,
# so that the memory check, not this table, answers a huge one with the bytes it needs. Limit: a
# billion images. Seed: torch.manual_seed takes 64 bits.
WHOLE = {"epochs": (1, 1_000_000), "batch_size": (1, 1_000_000), "resize": (1, 1_000_000),
         "limit": (1, 1_000_000_000), "seed": (0, 2**64 - 1)}
OPTIONAL = ("resize", "limit")  # None: not resized, every example
MAX_LR = 1000.0  # SGD on these networks diverges long before; 1e9 is a typo for 1e-9


def expected(key: str, value: Any) -> str | None:
    """What `key` must be when `value` is not it (as in "must be ..."); None when the value is fine."""
    if key in WHOLE:
        if value is None and key in OPTIONAL:
            return None
        lo, hi = WHOLE[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            return f"a whole number from {lo:,} to {hi:,}"
        return None
    if key == "lr":
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        return None if ok and 0 < value <= MAX_LR else f"a number above 0 and at most {MAX_LR:,.0f}"
    if key == "init":
        return None if value in INITS else f"one of {', '.join(INITS)}"
    if key == "dataset":
        return None if value in DATASETS else f"one of {', '.join(DATASETS)}"
    raise KeyError(key)
