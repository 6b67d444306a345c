"""What the command line prints: report tables."""

from __future__ import annotations

import pytest

from pipeline.cli import _print_table


def test_an_empty_table_says_none(capsys: pytest.CaptureFixture[str]) -> None:
    _print_table(["stream", "detector", "firings"], [])
    assert capsys.readouterr().out.splitlines() == ["stream  detector  firings", "(none)"]
    _print_table(["stream", "firings"], [("score", 2)])
    assert capsys.readouterr().out.splitlines() == ["stream  firings", "score   2      "]
