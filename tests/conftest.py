import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/seeds.py


@pytest.fixture
def specs() -> Path:
    return ROOT / "specs"


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A bare user: an empty per-user cache, no $ARCHDSL_DATA, no downloads, tmp_path as the working directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ARCHDSL_DATA", raising=False)
    monkeypatch.setenv("ARCHDSL_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
