"""Shared fixtures. Every server a test talks to is started here, on 127.0.0.1."""

from __future__ import annotations

import pytest

from helpers import LocalSite


@pytest.fixture
def site():
    local = LocalSite()
    yield local
    local.close()
