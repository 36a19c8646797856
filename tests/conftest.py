"""Shared fixtures: the public capture corpus, root-only tests, sample traffic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from corpus_paths import CORPUS


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    have_corpus = CORPUS.is_dir()
    skip_root = pytest.mark.skip(reason="needs root (network namespaces / raw sockets)")
    skip_corpus = pytest.mark.skip(reason=f"capture corpus not found at {CORPUS}")
    for item in items:
        if "root" in item.keywords and not is_root:
            item.add_marker(skip_root)
        if "corpus" in item.keywords and not have_corpus:
            item.add_marker(skip_corpus)


@pytest.fixture(scope="session")
def corpus() -> Path:
    return CORPUS
