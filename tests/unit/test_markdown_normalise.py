from __future__ import annotations

import pytest

from converters.markdown import normalize_markdown

pytestmark = pytest.mark.unit


def test_line_endings_become_lf() -> None:
    assert normalize_markdown("a\r\nb\rc\n") == "a\nb\nc\n"


def test_trailing_whitespace_is_stripped() -> None:
    assert normalize_markdown("# Title  \ntext\t \n") == "# Title\ntext\n"


def test_blank_runs_collapse_to_one_blank_line() -> None:
    assert normalize_markdown("a\n\n\n\nb\n\n\nc") == "a\n\nb\n\nc\n"
    assert normalize_markdown("a\n  \n\t\n \nb") == "a\n\nb\n"


def test_single_blank_lines_are_kept() -> None:
    text = "# H\n\npara one\n\npara two\n"
    assert normalize_markdown(text) == text


def test_exactly_one_final_newline() -> None:
    assert normalize_markdown("text") == "text\n"
    assert normalize_markdown("text\n\n\n\n") == "text\n"


def test_leading_blank_lines_are_dropped() -> None:
    assert normalize_markdown("\n\n\n# H\n") == "# H\n"


def test_empty_documents_stay_empty() -> None:
    assert normalize_markdown("") == ""
    assert normalize_markdown("\n \r\n\t\n") == ""


def test_fenced_code_is_kept_verbatim_except_line_endings() -> None:
    text = (
        "intro  \r\n```python\r\nx = 1   \r\n\r\n\r\n\r\ny = 2\t\r\n```\r\n\r\n\r\n\r\nafter  \r\n"
    )
    assert normalize_markdown(text) == ("intro\n```python\nx = 1   \n\n\n\ny = 2\t\n```\n\nafter\n")


def test_tilde_fences_and_longer_closers() -> None:
    text = "~~~\na  \n\n\n~~~~\nb  \n"
    assert normalize_markdown(text) == "~~~\na  \n\n\n~~~~\nb\n"


def test_a_shorter_or_different_fence_does_not_close() -> None:
    text = "````\n```\nkeep  \n````\nout  \n"
    assert normalize_markdown(text) == "````\n```\nkeep  \n````\nout\n"
    text = "```\n~~~\nkeep  \n```\nout  \n"
    assert normalize_markdown(text) == "```\n~~~\nkeep  \n```\nout\n"


def test_inline_triple_backticks_are_not_a_fence() -> None:
    text = "```inline``` code  \n\n\n\nnext  \n"
    assert normalize_markdown(text) == "```inline``` code\n\nnext\n"


def test_unclosed_fence_runs_to_the_end() -> None:
    text = "```\ncode  \n\n\nmore  \n"
    assert normalize_markdown(text) == "```\ncode  \n\n\nmore  \n"


def test_idempotent() -> None:
    text = "# T \r\n\r\n\r\n- a\n- b  \n\n\n```\nz  \n\n\n```\n\n\n| a | b |\n"
    once = normalize_markdown(text)
    assert normalize_markdown(once) == once
