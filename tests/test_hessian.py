"""Contract of `graphpart hessian` (graphpart/tools/hessian), run in-process through the CLI.

On a small digits model in float64: the Lanczos and power-iteration eigenvalues (over HVPs)
equal the dense Hessian's top eigenvalues; the printed checks hold (symmetry and central
differences to 1e-6 or better; with --stages/--microbatches the pipelined HVP equals the
one-process one to 1e-10); the cost section gives positive times, matmul FLOPs with the HVP's
above the gradient's, and the bytes each keeps; `--graph -` lists the forward-over-reverse
graph's four passes and `--graph FILE.dot` writes it with the passes as its legend; the defaults
are float64 and the 64-16-10 model unless --dtype/--hidden/a config file say otherwise; bad
flags are one-line errors with exit code 2. The spectrum tools (Lanczos, power iteration) find
a known matrix's extreme eigenvalues.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from graphpart.cli import main
from graphpart.run.config import Config
from graphpart.tools.hessian import hessian_config
from graphpart.tools.hessian.spectrum import lanczos, power_iteration

SMALL = ["--hidden", "8", "--samples", "300", "--repeats", "2", "--iters", "30", "--top", "3"]


def _json(capsys, argv):
    assert main(["hessian", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_spectrum_dense_lanczos_power_agree(capsys):
    f = _json(capsys, SMALL)
    assert f["model"]["dtype"] == "float64" and f["model"]["sizes"] == [64, 8, 10]
    n = f["model"]["parameters"]
    assert n == 64 * 8 + 8 + 8 * 10 + 10
    dense = np.array(f["dense"]["top"])
    assert f["dense"]["hvps"] == n
    np.testing.assert_allclose(f["lanczos"]["top"], dense, rtol=1e-8)
    np.testing.assert_allclose(f["power"]["top"], dense[: len(f["power"]["top"])], rtol=1e-6)
    assert f["dense"]["smallest"] <= dense[-1]
    c = f["checks"]
    assert c["symmetry"] < 1e-10 and c["finite_differences"] < 1e-6
    t = f["cost"]
    assert t["grad_s"] > 0 and t["hvp_s"] > 0
    assert t["hvp_flops"] > t["grad_flops"] > 0
    assert t["hvp_kept"] > t["grad_kept"] > 0


def test_pipelined_check(capsys):
    argv = [*SMALL, "--hidden", "8,8", "--stages", "2", "--microbatches", "3", "--dense-max", "0"]
    f = _json(capsys, argv)
    p = f["checks"]["pipelined"]
    assert (p["stages"], p["microbatches"]) == (2, 3)
    assert p["max_rel_diff"] < 1e-10
    assert f["dense"] is None


def test_text_report(capsys):
    assert main(["hessian", *SMALL, "--dense-max", "0", "--power", "0"]) == 0
    out = capsys.readouterr().out
    assert "largest eigenvalues of H" in out and "Lanczos (30 HVPs)" in out
    assert "dense: skipped" in out and "HVP / gradient" in out and "matmul FLOPs" in out


def test_graph_listing_and_file(capsys, tmp_path):
    assert main(["hessian", "--hidden", "4", "--set", "model.bias=false", "--graph", "-"]) == 0
    out = capsys.readouterr().out
    for line in (
        "pass 1: tangent forward (jvp)",
        "dz1 = jvp matmul(dW1, x, W1)",
        "dgW2 = add(dgW2<l2, dgW2<matmul2)",
    ):
        assert line in out
    path = tmp_path / "hvp.dot"
    assert main(["hessian", "--hidden", "4", "--graph", str(path)]) == 0
    text = path.read_text()
    assert 'label="passes"' in text and 'label="tangent backward (vjp_jvp)"' in text
    assert main(["hessian", "--hidden", "4", "--graph", str(path)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err


def _args(**kw):
    base = {"config": None, "set": [], "model.hidden": None, "train.dtype": None}
    return argparse.Namespace(**{**base, **kw})


def test_defaults():
    cfg = Config()
    assert hessian_config(cfg, _args()).train.dtype == "float64"
    assert hessian_config(cfg, _args()).model.hidden == (16,)
    assert hessian_config(cfg, _args(**{"train.dtype": "float32"})).train.dtype == "float32"
    assert hessian_config(cfg, _args(set=["model.hidden=32"])).model.hidden == cfg.model.hidden
    assert hessian_config(cfg, _args(config="mine.toml")).model.hidden == cfg.model.hidden


@pytest.mark.parametrize(
    ("argv", "needle"),
    [(["--top", "0"], "--top 0: use a whole number >= 1"), (["--iters", "-1"], "--iters -1")],
)
def test_bad_flags(capsys, argv, needle):
    assert main(["hessian", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_spectrum_tools_on_a_known_matrix():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    lam = np.concatenate([[10.0, 7.0, 5.0], rng.uniform(-1, 1, 47)])
    A = Q @ np.diag(lam) @ Q.T
    lz = lanczos(lambda u: A @ u, 50, 30, 3)
    np.testing.assert_allclose(lz.values, [10.0, 7.0, 5.0], rtol=1e-10)
    assert lz.products == 30
    pw = power_iteration(lambda u: A @ u, 50, 3, 500)
    np.testing.assert_allclose(pw.values, [10.0, 7.0, 5.0], rtol=1e-8)
    assert max(pw.residuals) < 1e-4
