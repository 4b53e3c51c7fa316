"""Fixtures of the data tests (helpers live in ``_data_helpers.py``)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
