"""CLI misuse fixtures: one directory of bad inputs, a tokenizer, token shards and a tiny checkpoint per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cli_helpers, under --import-mode=importlib

from cli_helpers import build_work  # noqa: E402


@pytest.fixture(scope="session")
def work(tmp_path_factory) -> Path:
    """The shared working directory every command runs in (see cli_helpers.build_work)."""
    return build_work(tmp_path_factory.mktemp("misuse"))
