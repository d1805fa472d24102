"""Predictions files (graphpart.run.predictions).

Contract: `save_predictions` writes a new .npz (predictions, and logits if given) or .csv (a
header row, then a row per sample) and never overwrites a file; `check_out` refuses an
existing file, a missing folder and an unknown format in one line naming the flag; the
module's docstring examples run.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from graphpart.errors import GraphpartError
from graphpart.run import predictions
from graphpart.run.predictions import save_predictions


def test_module_docstring_examples_run():
    result = doctest.testmod(predictions, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


# --- save_predictions --------------------------------------------------------------------------


def test_save_predictions_writes_npz_and_csv_and_never_overwrites(tmp_path):
    p, logits = np.array([2, 0, 1]), np.eye(3, dtype=np.float32)
    out = save_predictions(tmp_path / "p.npz", p, logits)
    with np.load(out) as z:
        np.testing.assert_array_equal(z["predictions"], p)
        np.testing.assert_array_equal(z["logits"], logits)
    reg = save_predictions(tmp_path / "r.csv", np.array([[0.5, 1.0], [2.0, -1.0]]))
    assert reg.read_text() == "output_0,output_1\n0.5,1.0\n2.0,-1.0\n"
    before = out.read_bytes()
    with pytest.raises(GraphpartError, match="already exists and is not overwritten"):
        save_predictions(out, np.array([9]))
    assert out.read_bytes() == before
    with pytest.raises(GraphpartError, match="folder .* does not exist"):
        save_predictions(tmp_path / "nope" / "p.csv", p)
    with pytest.raises(GraphpartError, match="unknown format '.txt'"):
        save_predictions(tmp_path / "p.txt", p)
