"""archdsl's per-user cache folder: parser tables, data sets, layer timings. No torch, no lark."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/archdsl, or ~/.cache/archdsl (relative where there is no home to expand)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "archdsl"
