"""Fixtures of the recorder tests (helpers live in ``record_helpers``)."""

from __future__ import annotations

import pytest
from record_helpers import PROMPTS


@pytest.fixture
def prompts() -> list[str]:
    """Five prompts of different lengths."""
    return list(PROMPTS)
