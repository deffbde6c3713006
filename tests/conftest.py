"""Shared test set-up: fixture modules, and markers chosen by folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.docling_artifacts",
    "tests.fixtures.office_docs",
    "tests.fixtures.web_docs",
    "tests.fixtures.daemon",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).parent.name
        if kind in {"unit", "integration", "e2e"}:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(autouse=True, scope="session")
def _stop_the_resident_pandoc() -> Iterator[None]:
    """Routes called in this process share one resident pandoc: stop it at the end."""
    yield
    from converters.pandoc_resident import shared_pandoc

    if shared_pandoc.cache_info().currsize:
        shared_pandoc().close()
