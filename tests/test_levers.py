"""bench/levers.py: square-root frequency resampling (Mahajan et al. 2018) draws each label in
proportion to the square root of its frequency."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
SPEC = importlib.util.spec_from_file_location("levers", BENCH / "levers.py")
levers = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(levers)


def test_sqrt_weights_draw_labels_by_the_square_root_of_their_frequency():
    freq = [400, 100, 25]
    y = np.zeros((sum(freq), 3))
    y[:400, 0], y[400:500, 1], y[500:, 2] = 1, 1, 1
    w = levers.sqrt_weights(y)
    assert w.sum() == pytest.approx(1.0)
    mass = np.array([w[y[:, j] == 1].sum() for j in range(3)])
    np.testing.assert_allclose(mass / mass.sum(), np.sqrt(freq) / np.sqrt(freq).sum())


def test_sqrt_weights_sum_over_labels_and_keep_unlabelled_images():
    y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
    w = levers.sqrt_weights(y)
    assert w[1] > w[0] == pytest.approx(w[3])  # a second, rarer label adds weight
    assert w[2] > 0  # an image without labels keeps the mean weight
