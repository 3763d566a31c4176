from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.loadtest.tiny import ROOT, Tiny, tiny_bundles

# `ops` is not in pyproject's [tool.setuptools.packages.find] yet, so the editable install does
# not map it and a bare `pytest` (no cwd on sys.path) cannot import it. Remove once it is listed.
if importlib.util.find_spec("ops") is None:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    return tiny_bundles(tmp_path_factory)
