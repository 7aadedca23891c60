"""The unit tier: pure and in-process, no Ray and no engines; seconds per file (tests/README.md)."""

from pathlib import Path

import pytest

from tests.conftest import mark_tier


def pytest_collection_modifyitems(config, items):
    mark_tier(items, Path(__file__).parent, pytest.mark.unit)
