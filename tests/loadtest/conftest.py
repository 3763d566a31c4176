from __future__ import annotations

import pytest

from tests.loadtest.tiny import Tiny, tiny_bundles


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    return tiny_bundles(tmp_path_factory)
