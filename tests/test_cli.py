"""The `graphpart` command line, as a user runs it.

Contract: `graphpart train` on the embedded default reaches >= 95% test accuracy on digits and
`--json` prints one final JSON line with final_loss, test_accuracy, steps, wall_s,
samples_per_s; a pipeline run on a local Ray (3 stages) reaches the same accuracy as one
process and leaves no Ray process behind; bad input (config keys and values, a user's .npz with
wrong shapes, NaN, labels out of range or beyond the number of samples, values beyond the
training dtype, non-numeric dtype; argparse's refusals; a CUDA device on a machine without one;
an --out that would overwrite a file or lies in a missing folder; bad benchmark options) is a
one-line error naming the value, exit code 2, no traceback, and nothing is written; an
unexpected exception (a fault) is one line naming its type, exit code 1, and `--debug` shows
its traceback instead; `plan` and `graph` work without Ray. A run trained on a .csv (a header
row skipped) is evaluated by `evaluate` on its test split to the run's own test figures, and on
a .csv and a .npz of the same samples alike; `predict` prints, or writes to a new .npz/.csv
(never over a file), a prediction per sample; a missing run directory, a run without
params.npz (naming its state), a file whose feature count differs from the model's (naming
both) and labels beyond the model's classes are one-line errors, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphpart.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "graphpart.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _run_tracked(*args: str, cwd: Path, interrupt_when_actors: int = 0):
    """Run the CLI, polling the processes it starts (Ray's included, all its descendants).

    With `interrupt_when_actors`, send SIGINT once that many stage actors run. Returns the
    finished Popen, its output, and every descendant pid seen; robust to other Ray sessions
    on the machine, which are not our descendants.
    """
    import signal
    import time

    import psutil

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen(
        [sys.executable, "-m", "graphpart.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: set[int] = set()
    parent = psutil.Process(p.pid)
    sent = False
    deadline = time.time() + 300
    while p.poll() is None and time.time() < deadline:
        try:
            kids = parent.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        seen |= {k.pid for k in kids}
        if interrupt_when_actors and not sent:
            actors = 0
            for k in kids:
                try:
                    actors += "StageActor" in " ".join(k.cmdline())
                except psutil.Error:
                    pass
            if actors >= interrupt_when_actors:
                time.sleep(2)
                p.send_signal(signal.SIGINT)
                sent = True
        time.sleep(0.2)
    out, err = p.communicate(timeout=120)
    return p, out, err, seen


def _alive(pids: set[int]) -> set[int]:
    import time

    import psutil

    def alive() -> set[int]:
        out = set()
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.add(pid)
            except psutil.NoSuchProcess:
                pass
        return out

    end = time.time() + 5  # "no process of ours outlives the run by more than a few seconds"
    while alive() and time.time() < end:
        time.sleep(0.2)
    return alive()


def _ps() -> list[str]:
    """'pid args' of every process, command lines untruncated."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return out.splitlines()[1:]


@pytest.mark.ray
def test_train_default_json(tmp_path):
    r = _run("train", "--json", "--run-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    s = json.loads(lines[0])
    for key in ("final_loss", "test_accuracy", "steps", "wall_s", "samples_per_s"):
        assert key in s
    # steady state (the median step) apart from the first steps, and the plain mean beside it
    assert s["samples_per_s"] > 0 and s["samples_per_s_mean"] > 0
    assert s["first_steps"] == 3 and 0 < s["first_steps_s"] < s["train_s"]
    assert s["test_accuracy"] >= 0.95
    assert s["steps"] == 30 * 23  # 30 epochs of ceil(1438 / 64) steps
    run = Path(s["run_dir"])
    assert {
        "config.toml",
        "plan.json",
        "metrics.jsonl",
        "params.npz",
        "checkpoint.npz",
        "summary.json",
    } <= {p.name for p in run.iterdir()}
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 31))
    assert "Traceback" not in r.stderr


@pytest.mark.ray
def test_pipeline_cli_matches_single_process_and_cleans_up(tmp_path):
    common = ("--json", "--epochs", "4", "--run-dir", str(tmp_path))
    three, out3, err3, seen = _run_tracked(
        "train", *common, "--stages", "3", "--hidden", "48,32", cwd=tmp_path
    )
    one3 = _run("train", *common, "--hidden", "48,32", cwd=tmp_path)
    assert three.returncode == 0 and one3.returncode == 0, err3
    a, b = json.loads(one3.stdout), json.loads(out3)
    assert b["runtime"] == "ray" and b["stages"] == 3 and a["runtime"] == "local"
    assert b["transport"] == "shm"  # the default
    assert b["test_accuracy"] == a["test_accuracy"]
    assert abs(b["final_loss"] - a["final_loss"]) < 1e-5
    assert len(b["stage_stats"]) == 3 and b["stage_stats"][0]["bytes_sent"] > 0
    assert seen, "the pipeline started no processes"
    assert not _alive(seen), "processes left behind"


@pytest.mark.ray
@pytest.mark.parametrize("transport", ["push"])  # shm, the default: the test above
def test_other_transports_train_the_same_and_clean_up(tmp_path, transport):
    common = ("--json", "--epochs", "2", "--run-dir", str(tmp_path), "--hidden", "32,32")
    two, out2, err2, seen = _run_tracked(
        "train",
        *common,
        "--stages",
        "2",
        "--microbatches",
        "4",
        "--transport",
        transport,
        cwd=tmp_path,
    )
    one = _run("train", *common, cwd=tmp_path)
    assert two.returncode == 0 and one.returncode == 0, err2
    a, b = json.loads(one.stdout), json.loads(out2)
    assert b["runtime"] == "ray" and b["transport"] == transport and a["transport"] == "inprocess"
    assert b["test_accuracy"] == a["test_accuracy"]
    assert abs(b["final_loss"] - a["final_loss"]) < 1e-5
    assert seen and not _alive(seen), "processes left behind"


def _err(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("graphpart: error: "), err
    return err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--activation", "softsign"], "softsign"),
        (["--hidden", "64,-3"], "-3"),
        (["--hidden", "0"], "0"),
        (["--set", "train.epoch=3"], "train.epoch"),
        (["--set", "trian.epochs=3"], "trian"),
        (["--loss", "hinge"], "hinge"),
        (["--dtype", "float16"], "float16"),
        (["--batch-size", "0"], "batch_size=0"),
        (["--stages", "9"], "stages=9"),
        (["--schedule", "zigzag"], "zigzag"),
        (["--transport", "carrier-pigeon"], "carrier-pigeon"),
        (["--transport", "inprocess", "--address", "auto"], "needs a Ray transport"),
        (["--data", "nope.csv"], "nope.csv"),
        (["--microbatches", "100"], "microbatches=100"),
        (["--memory-budget", "lots"], "memory_budget='lots'"),
        (["--memory-budget", "1KiB"], "does not fit: needs"),
        (["--data-parallel", "2", "--transport", "inprocess"], "transport='inprocess'"),
        (["--transport", "tasks"], "tasks was removed (the driver was on every hop"),
        (["--stages", "2", "--transport", "compiled"], "compiled was removed (Ray's compiled"),
    ],
)
def test_bad_flags(capsys, tmp_path, argv, needle):
    err = _err(capsys, ["train", "--run-dir", str(tmp_path), *argv])
    assert needle in err


def _npz(tmp_path: Path, name: str, **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_bad_npz(capsys, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((20, 4)), np.arange(20) % 3
    cases = {
        "shape.npz": (dict(X=X[:, 0], y=y), "X has shape (20,)"),
        "count.npz": (dict(X=X, y=y[:19]), "19"),
        "nan.npz": (dict(X=np.where(X > 0.9, np.nan, X), y=y), "NaN"),
        "neg.npz": (dict(X=X, y=y - 1), "-1"),
        "float.npz": (dict(X=X, y=y + 0.5), "0.5"),
        "dtype.npz": (dict(X=X.astype(str), y=y), "dtype"),
        "missing.npz": (dict(X=X), "missing array 'y'"),
    }
    for name, (arrays, needle) in cases.items():
        path = _npz(tmp_path, name, **arrays)
        err = _err(capsys, ["train", "--data", path, "--run-dir", str(tmp_path)])
        assert needle in err and name in err, err


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_user_npz_trains(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = (X[:, 0] > 0).astype(int)
    path = _npz(tmp_path, "mine.npz", X=X, y=y)
    code = main(
        [
            "train",
            "--data",
            path,
            "--epochs",
            "3",
            "--hidden",
            "8",
            "--no-progress",
            "--run-dir",
            str(tmp_path),
            "--json",
        ]
    )
    assert code == 0


@pytest.mark.ray
def test_console_script_error_has_no_traceback(tmp_path):
    r = _run("train", "--activation", "softsign", "--run-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "softsign" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_existing_run_dir_is_never_reused(capsys, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    err = _err(capsys, ["train", "--run-dir", str(tmp_path), "--name", "mine", "--epochs", "1"])
    assert "already exists" in err
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep me"


def test_plan_and_graph(capsys, tmp_path):
    assert main(["plan", "--stages", "2", "--hidden", "32,32", "--microbatches", "4"]) == 0
    out = capsys.readouterr().out
    assert "stage" in out and "bubble" in out
    assert main(["plan", "--stages", "2", "--hidden", "32,32", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in data["stages"]] == [0, 1]
    assert main(["graph", "--out", str(tmp_path / "g.dot")]) == 0
    dot = (tmp_path / "g.dot").read_text()
    for name in ("x", "W1", "z1", "h1", "W2", "o", "y", "L", "s", "J"):
        assert f'"{name}"' in dot
    assert main(["graph", "--stages", "2", "--hidden", "32,32"]) == 0
    assert "stage 1" in capsys.readouterr().out
    # the default model splits four ways, as `graphpart plan --stages 4` promises
    assert main(["plan", "--stages", "4", "--strategy", "balanced", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in data["stages"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--devices", "1"], "at least 2 devices"),
        (["--devices", "5"], "at most 4 stages"),
        (["--memory-budget", "12 furlongs"], "12 furlongs"),
    ],
)
def test_compare_bad_flags(capsys, tmp_path, argv, needle):
    assert needle in _err(capsys, ["compare", "--run-dir", str(tmp_path), *argv])


def test_plan_auto(capsys, ray_session):  # it times Ray's calls: on the session's Ray
    assert main(["plan", "--auto", "--devices", "2", "--memory-budget", "300KiB"]) == 0
    out = capsys.readouterr().out
    assert "setups considered for 2 device(s), budget 300.00 KiB" in out
    best = out.strip().splitlines()[
        -1
    ]  # the proposal, budget included (tests/test_auto_command.py runs it)
    assert best.startswith("best: graphpart train ") and "pipeline.memory_budget=300KiB" in best
    assert main(["plan", "--auto", "--devices", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    kinds = {c["kind"] for c in data["candidates"]}
    assert kinds == {"single", "accumulate", "pipeline", "data-parallel"}
    assert data["rates"]["flops_per_s"] > 0


@pytest.mark.ray
def test_ctrl_c_stops_a_pipeline_cleanly(tmp_path):
    """Ctrl-C: exit 130, one line, no process left (the since-removed compiled transport once
    segfaulted after printing "interrupted")."""
    p, out, err, seen = _run_tracked(
        "train",
        "--transport",
        "auto",
        "--stages",
        "2",
        "--hidden",
        "64,64",
        "--epochs",
        "200",
        "--no-progress",
        "--run-dir",
        str(tmp_path),
        cwd=tmp_path,
        interrupt_when_actors=2,
    )
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not _alive(seen), "processes left behind"


@pytest.mark.ray
def test_join_existing_cluster_and_bad_addresses(tmp_path):
    """--address auto joins a cluster started with `ray start`; dead addresses fail fast."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # auth off on both sides: the test must not depend on a token in ~/.ray
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled"}
    bad = _run(
        "train",
        "--stages",
        "2",
        "--address",
        "127.0.0.1:9",
        "--run-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "127.0.0.1:9" in bad.stderr and "Traceback" not in bad.stderr
    import shutil
    import tempfile

    tmp_ray = Path(tempfile.mkdtemp(prefix="gp-ray-", dir="/tmp"))  # AF_UNIX paths are short
    start = subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            "6390",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={tmp_ray}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert start.returncode == 0, start.stderr
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "graphpart.cli",
                "train",
                "--stages",
                "2",
                "--address",
                "127.0.0.1:6390",
                "--epochs",
                "2",
                "--json",
                "--run-dir",
                str(tmp_path),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["runtime"] == "ray" and s["stages"] == 2 and s["test_accuracy"] > 0.5
    finally:  # stop only this cluster (`ray stop` would stop every Ray on the machine)
        _kill_matching(str(tmp_ray))
        shutil.rmtree(tmp_ray, ignore_errors=True)


def _kill_matching(tag: str) -> None:
    import signal
    import time

    def pids() -> list[int]:
        return [int(x.split()[0]) for x in _ps() if tag in x]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(2)


# --- every failure is one line: argparse, faults, --debug ------------------------------------


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["train", "--epochs", "abc"],
            "argument --epochs: invalid int value: 'abc' (see graphpart train --help)",
        ),
        (["train", "--bogus"], "unrecognized arguments: --bogus (see graphpart train --help)"),
        ([], "the following arguments are required: COMMAND (see graphpart --help)"),
        (["--debug"], "the following arguments are required: COMMAND (see graphpart --help)"),
        (["trian"], "argument COMMAND: invalid choice: 'trian'"),
        (
            ["plan", "--top", "x"],
            "argument --top: invalid int value: 'x' (see graphpart plan --help)",
        ),
        (["compare", "--lr-rule", "cubic"], "argument --lr-rule: invalid choice: 'cubic'"),
        (["bench", "--bogus"], "unrecognized arguments: --bogus (see graphpart bench step --help)"),
    ],
)
def test_argparse_refusals_are_one_line(capsys, argv, line):
    err = _err(capsys, argv)
    assert err.startswith(f"graphpart: error: {line}"), err
    assert "usage:" not in err


def test_help_still_prints_and_exits_0(capsys):
    assert main(["train", "--help"]) == 0
    assert "usage: graphpart train" in capsys.readouterr().out


def _boom(*args, **kwargs):
    raise RuntimeError("boom at the second step\nwith a second line")


def test_a_fault_is_one_line_with_its_type_and_exit_1(capsys, monkeypatch):
    monkeypatch.setattr("graphpart.cli.commands.plan_report", _boom)
    assert main(["plan"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "graphpart: error: RuntimeError: boom at the second step "
        "(a fault; rerun with --debug for the traceback)\n"
    )


def test_debug_shows_the_fault_traceback(capsys, monkeypatch):
    monkeypatch.setattr("graphpart.cli.commands.plan_report", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "plan"])


def test_bad_input_stays_exit_2_under_debug_with_its_traceback(capsys):
    assert main(["--debug", "train", "--activation", "softsign"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("graphpart: error: model.activation='softsign'")


def test_ctrl_c_is_exit_130(capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("graphpart.cli.commands.plan_report", interrupted)
    assert main(["plan"]) == 130
    assert capsys.readouterr().err == "graphpart: interrupted\n"


# --- a CUDA device where there is none ------------------------------------------------------


@pytest.fixture
def no_gpu(monkeypatch):
    """numba.cuda as on a machine without a CUDA driver (whatever this machine has)."""
    from numba import cuda

    reason = "\nCUDA driver library cannot be found.\nIf you are sure that a driver is installed,\n"
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.setattr(cuda, "cuda_error", lambda: reason)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--epochs", "1", "--run-dir", "{tmp}/runs"],
        ["compare", "--epochs", "1", "--run-dir", "{tmp}/runs"],
        ["profile", "--steps", "1", "--out", "{tmp}/profile"],
    ],
)
def test_cuda_without_a_gpu_fails_before_anything_is_written(capsys, tmp_path, no_gpu, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    err = _err(capsys, [*argv, "--device", "cuda"])
    assert err == (
        "graphpart: error: pipeline.device='cuda': no CUDA device was found (CUDA driver "
        "library cannot be found); check with nvidia-smi, or use --device cpu"
    )
    assert list(tmp_path.iterdir()) == []


def test_plan_for_cuda_needs_no_gpu(capsys, no_gpu):
    assert main(["plan", "--device", "cuda"]) == 0


# --- output paths: never overwrite a user's file, never write into a missing folder ---------


def test_graph_out_into_a_missing_folder(capsys, tmp_path):
    err = _err(capsys, ["graph", "--out", str(tmp_path / "nope" / "g.svg")])
    assert f"folder {tmp_path / 'nope'} does not exist" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["g.dot", "g.svg", "g"])
def test_graph_out_onto_an_existing_file_is_refused_unless_forced(capsys, tmp_path, name):
    mine = tmp_path / name
    mine.write_text("keep me")
    err = _err(capsys, ["graph", "--out", str(mine)])
    assert f"--out {mine}: the file already exists" in err and "--force" in err
    assert mine.read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1
    if name != "g.svg":  # .svg needs Graphviz
        assert main(["graph", "--out", str(mine), "--force"]) == 0
        assert mine.read_text().startswith("digraph graphpart")


def test_graph_out_onto_a_folder_is_refused(capsys, tmp_path):
    err = _err(capsys, ["graph", "--out", str(tmp_path)])
    assert f"--out {tmp_path}: is a folder" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["mine.txt", "mine.txt/sub"])
def test_profile_out_onto_an_existing_file_is_refused(capsys, tmp_path, out):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep me")
    err = _err(capsys, ["profile", "--steps", "1", "--out", str(tmp_path / out)])
    assert f"--out {tmp_path / out}: " in err and "profile writes a folder" in err
    assert mine.read_text() == "keep me" and list(tmp_path.iterdir()) == [mine]


# --- a user's .npz that cannot train: refused before the run directory -----------------------


def test_npz_that_cannot_train_fails_before_the_run_directory(capsys, tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.random((20, 4)), np.arange(20) % 3
    data = tmp_path / "data"
    data.mkdir()
    cases = {
        "huge_label.npz": (dict(X=X, y=np.where(y == 2, 10**12, y)), "y[2] = 1000000000000"),
        "huge_float_label.npz": (dict(X=X, y=np.where(y == 2, 1e12, y)), "y[2] = 1000000000000"),
        "beyond_float32.npz": (dict(X=np.where(X > 0.9, 1e300, X), y=y), "= 1e+300"),
        "inf.npz": (dict(X=np.where(X > 0.9, np.inf, X), y=y), "NaN/inf"),
        "half_label.npz": (dict(X=X, y=y * 0.5), "= 0.5"),
    }
    runs = tmp_path / "runs"
    for name, (arrays, needle) in cases.items():
        path = _npz(data, name, **arrays)
        err = _err(capsys, ["train", "--data", path, "--run-dir", str(runs), "--epochs", "1"])
        assert needle in err and name in err, err
        assert not runs.exists()


# --- the benchmarks' own options ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["bench", "step", "--optimizers", "foo"], "--optimizers: 'foo' is not an optimizer"),
        (["bench", "step", "--optimizers", "adam,foo"], "'foo' is not an optimizer; valid: "),
        (["bench", "step", "--sizes", "10"], "--sizes: '10': must be layer widths"),
        (["bench", "step", "--sizes", "10,x"], "'10,x'"),
        (["bench", "step", "--sizes", "10,0"], "'10,0'"),
        (["bench", "step", "--batch", "0"], "--batch: '0': must be an integer >= 1"),
        (["bench", "step", "--repeats", "-1"], "--repeats: '-1'"),
        (["bench", "step", "--pause", "nan"], "--pause: 'nan'"),
        (["bench", "step", "--dtype", "float16"], "invalid choice: 'float16'"),
        (["bench", "--", "--bogus"], "unrecognized arguments: --bogus"),
        (["bench", "--pipeline", "--", "--sizes", "10"], "at least 3 positive integers"),
        (["bench", "pipeline", "--sizes", "10,3"], "'10,3'"),
        (["bench", "pipeline", "--schedules", "zigzag"], "'zigzag' is not a schedule"),
        (["bench", "pipeline", "--microbatches", "0"], "--microbatches: '0'"),
        (
            ["bench", "pipeline", "--batch", "2", "--microbatches", "1,4"],
            "M=4 exceeds --batch 2",
        ),
        (["bench", "pipeline", "--steps", "0"], "--steps: '0'"),
    ],
)
def test_bench_bad_options_are_one_line(capsys, argv, needle):
    err = _err(capsys, argv)
    assert needle in err, err
    kind = "pipeline" if {"pipeline", "--pipeline"} & set(argv) else "step"
    assert err.endswith(f"(see graphpart bench {kind} --help)"), err


def test_bench_help_lists_the_benchmarks_and_each_its_own_flags_with_defaults(capsys):
    """`graphpart bench --help` names the benchmarks; each one's --help shows its real flags
    with their defaults (no `--` pass-through any more; the old spellings still work)."""
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "step" in out and "pipeline" in out and "--pipeline" in out
    assert main(["bench", "step", "--help"]) == 0
    out = capsys.readouterr().out
    assert (
        "--optimizers" in out and "(default: adam,sgd)" in out and "--transfer-samples" not in out
    )
    assert main(["bench", "--pipeline", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--transfer-samples" in out and "(default: 200)" in out and "--optimizers" not in out


@pytest.mark.parametrize(
    "command, absent, present",
    [
        ("plan", ["--epochs", "--lr", "--address", "--run-dir", "--max-failures"], ["--stages"]),
        ("graph", ["--epochs", "--lr", "--batch-size", "--device", "--transport"], ["--hidden"]),
        ("profile", ["--epochs", "--run-dir", "--max-failures"], ["--transport"]),
        ("compare", ["--stages", "--data-parallel", "--name"], ["--epochs", "--lr"]),
        ("hessian", ["--epochs", "--lr", "--transport", "--run-dir"], ["--dtype"]),
    ],
)
def test_each_command_shows_only_its_own_flags_with_defaults(capsys, command, absent, present):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    flags = {w.rstrip(",") for w in out.split() if w.startswith("--")}
    assert not flags & set(absent), flags & set(absent)
    assert set(present) <= flags
    assert "(default: " in out


def test_version(capsys):
    from graphpart import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"graphpart {__version__}"


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_resume_takes_overrides_and_refuses_what_it_cannot_do(capsys, tmp_path):
    base = ["train", "--json", "--epochs", "1", "--hidden", "16", "--run-dir", str(tmp_path)]
    assert main([*base, "--name", "r"]) == 0
    capsys.readouterr()
    run = tmp_path / "r"
    err = _err(capsys, ["train", "--resume", str(run)])
    assert "finished 1 epoch(s)" in err and "--epochs N with N > 1" in err
    err = _err(capsys, ["train", "--resume", str(run), "--epochs", "2", "--hidden", "8"])
    assert "model.hidden was" in err
    assert main(["train", "--json", "--resume", str(run), "--epochs", "2", "--lr", "0.0005"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "completed" and out["epochs"] == 2
    assert "lr = 0.0005" in (run / "config.toml").read_text()


# --- evaluate and predict: a trained run, one process, no Ray --------------------------------


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A run trained by `graphpart train --data file.csv` (with a header), and its data."""
    root = tmp_path_factory.mktemp("csvrun")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    header = "a,b,c,d,e,label"
    data = np.column_stack([X, y])
    np.savetxt(root / "mine.csv", data, delimiter=",", fmt="%.17g", header=header, comments="")
    argv = ["train", "--data", str(root / "mine.csv"), "--epochs", "3", "--hidden", "8"]
    assert main([*argv, "--run-dir", str(root), "--name", "r", "--no-progress", "--json"]) == 0
    return root, X, y


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_train_on_a_csv_then_evaluate_on_its_test_split(capsys, csv_run):
    root, _, _ = csv_run
    capsys.readouterr()
    summary = json.loads((root / "r" / "summary.json").read_text())
    assert summary["state"] == "completed" and summary["steps"] == 3 * 3  # 160 rows / 64
    assert main(["evaluate", str(root / "r"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["samples"] == 40 and m["data"] is None and m["run_dir"] == str(root / "r")
    assert m["accuracy"] == summary["test_accuracy"]
    assert m["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert main(["evaluate", str(root / "r")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("accuracy ") and "on 40 samples (the run's test split)" in out


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_evaluate_and_predict_on_files(capsys, tmp_path, csv_run):
    root, X, y = csv_run
    run = str(root / "r")
    np.savez(tmp_path / "all.npz", X=X, y=y)
    assert main(["evaluate", run, "--data", str(root / "mine.csv"), "--json"]) == 0
    from_csv = json.loads(capsys.readouterr().out)
    assert main(["evaluate", run, "--data", str(tmp_path / "all.npz"), "--json"]) == 0
    from_npz = json.loads(capsys.readouterr().out)
    assert from_csv["samples"] == 200 and from_csv["loss"] == from_npz["loss"]
    assert from_csv["accuracy"] == from_npz["accuracy"]

    assert main(["predict", run, "--data", str(root / "mine.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 200 and set(lines) <= {"0", "1", "2"}
    assert main(["predict", run, "--data", str(tmp_path / "all.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["samples"] == 200 and [str(p) for p in out["predictions"]] == lines

    argv = ["predict", run, "--data", str(tmp_path / "all.npz"), "--out", str(tmp_path / "p.npz")]
    assert main(argv) == 0
    assert "wrote 200 predictions to" in capsys.readouterr().err
    with np.load(tmp_path / "p.npz") as z:
        assert [str(p) for p in z["predictions"]] == lines and z["logits"].shape == (200, 3)
    out_csv = tmp_path / "p.csv"
    argv = ["predict", run, "--data", str(root / "mine.csv"), "--out", str(out_csv), "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(out_csv)
    assert out_csv.read_text().splitlines() == ["prediction", *lines]


def test_predict_never_overwrites_its_out_file(capsys, tmp_path, csv_run):
    root, _, _ = csv_run
    mine = tmp_path / "p.csv"
    mine.write_text("keep me")
    argv = ["predict", str(root / "r"), "--data", str(root / "mine.csv"), "--out", str(mine)]
    err = _err(capsys, argv)
    assert f"--out {mine}: the file already exists and is not overwritten" in err
    assert mine.read_text() == "keep me"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["evaluate", "{tmp}/missing"], "run directory {tmp}/missing: no such folder"),
        (["predict", "{tmp}/missing", "--data", "x.csv"], "no such folder"),
        (["predict", "{run}"], "the following arguments are required: --data"),
        (["evaluate"], "the following arguments are required: RUN_DIR"),
        (["evaluate", "{run}", "--data", "{tmp}/nope.csv"], "nope.csv: no such file"),
        (
            ["evaluate", "{run}", "--data", "{tmp}/narrow.csv"],
            "has 3 feature column(s) before its label column, but the model takes 5",
        ),
        (
            ["predict", "{run}", "--data", "{tmp}/narrow.csv"],
            "has 4 column(s), but the model takes 5 features",
        ),
        (
            ["predict", "{run}", "--data", "{tmp}/wide.npz"],
            "X has 7 feature(s), but the model takes 5",
        ),
        (
            ["predict", "{run}", "--data", "{tmp}/wide.npz", "--out", "{tmp}/p.txt"],
            "unknown format '.txt'",
        ),
        (
            ["predict", "{run}", "--data", "{tmp}/wide.npz", "--out", "{tmp}/no/p.csv"],
            "folder {tmp}/no does not exist",
        ),
        (
            ["evaluate", "{run}", "--data", "{tmp}/badlabel.csv"],
            "y[1] = 7 is out of range; labels must be in 0..2",
        ),
    ],
)
def test_evaluate_and_predict_refuse_in_one_line(capsys, tmp_path, csv_run, argv, needle):
    root, _, _ = csv_run
    np.savetxt(tmp_path / "narrow.csv", np.zeros((3, 4)), delimiter=",")
    np.savez(tmp_path / "wide.npz", X=np.zeros((3, 7)))
    np.savetxt(tmp_path / "badlabel.csv", [[0] * 5 + [1], [0] * 5 + [7]], delimiter=",")
    fill = {"tmp": str(tmp_path), "run": str(root / "r")}
    err = _err(capsys, [a.format(**fill) for a in argv])
    assert needle.format(**fill) in err, err
    assert not (tmp_path / "p.txt").exists() and not (tmp_path / "no").exists()


def test_evaluate_a_run_without_params_names_its_state(capsys, tmp_path, csv_run):
    root, _, _ = csv_run
    run = tmp_path / "running"
    run.mkdir()
    (run / "config.toml").write_text((root / "r" / "config.toml").read_text())
    (run / "summary.json").write_text(json.dumps({"state": "running", "pid": 7, "host": "n1"}))
    err = _err(capsys, ["evaluate", str(run)])
    assert f"run directory {run}: no params.npz; the run is still running (pid 7 on n1)" in err
    (run / "summary.json").write_text(json.dumps({"state": "failed", "message": "boom"}))
    err = _err(capsys, ["predict", str(run), "--data", str(root / "mine.csv")])
    assert "the run failed: boom; continue it from its last checkpoint" in err


def test_a_regression_csv_trains_evaluates_and_predicts(capsys, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((100, 3))
    np.savetxt(tmp_path / "reg.csv", np.column_stack([X, X @ [1.0, -1.0, 0.5]]), delimiter=",")
    argv = ["train", "--data", str(tmp_path / "reg.csv"), "--loss", "mse", "--hidden", "4"]
    assert main([*argv, "--epochs", "2", "--run-dir", str(tmp_path), "--name", "r", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_accuracy"] is None
    assert main(["evaluate", str(tmp_path / "r"), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert set(m) == {"run_dir", "data", "loss", "samples"} and m["samples"] == 20
    assert m["loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
    assert main(["predict", str(tmp_path / "r"), "--data", str(tmp_path / "reg.csv")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 100
    out = tmp_path / "p.csv"
    argv = ["predict", str(tmp_path / "r"), "--data", str(tmp_path / "reg.csv"), "--out", str(out)]
    assert main(argv) == 0
    assert (
        out.read_text().splitlines()[0] == "prediction" and len(out.read_text().splitlines()) == 101
    )


def test_mse_on_a_csv_of_whole_number_targets(capsys, tmp_path):
    X = np.arange(40.0).reshape(20, 2)
    np.savetxt(tmp_path / "counts.csv", np.column_stack([X, X.sum(axis=1)]), delimiter=",")
    argv = ["train", "--data", str(tmp_path / "counts.csv"), "--loss", "mse", "--epochs", "1"]
    assert main([*argv, "--hidden", "4", "--run-dir", str(tmp_path), "--json"]) == 0


@pytest.mark.ray  # tensorboardX imports torch when it is installed (seconds)
def test_train_tensorboard_flag_writes_event_files(tmp_path):
    """--tensorboard is train.tensorboard = true: the run directory gets tensorboard/ events."""
    pytest.importorskip("tensorboardX")
    code = main(
        ["train", "--epochs", "1", "--hidden", "16", "--tensorboard", "--no-progress"]
        + ["--run-dir", str(tmp_path), "--name", "tb"]
    )
    assert code == 0
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    assert "tensorboard = true" in (tmp_path / "tb" / "config.toml").read_text()


def test_graph_hvp_lists_the_four_passes_and_draws_them(tmp_path, capsys):
    """graph --hvp: the forward-over-reverse graph, as a listing and as DOT named by pass."""
    assert main(["graph", "--hvp", "--hidden", "8"]) == 0
    text = capsys.readouterr().out
    assert [x for x in text.splitlines() if x.startswith("pass ")] == [
        "pass 0: forward",
        "pass 1: tangent forward (jvp)",
        "pass 2: backward (vjp)",
        "pass 3: tangent backward (vjp_jvp)",
    ]
    out = tmp_path / "hvp.dot"
    assert main(["graph", "--hvp", "--hidden", "8", "--out", str(out)]) == 0
    assert 'label="tangent backward (vjp_jvp)"' in out.read_text()


@pytest.mark.ray  # ~10 s: the benchmark's own calibration
def test_bench_says_what_it_is_doing_on_stderr(capsys):
    """A benchmark runs for minutes: progress lines go to stderr, the JSON alone to stdout."""
    argv = ["bench", "step", "--sizes", "16,8,4", "--repeats", "2", "--warmup", "1"]
    argv += ["--rounds", "1", "--optimizers", "sgd", "--bias", "yes", "--no-torch"]
    assert main([*argv, "--matmul-n", "64", "--pause", "0", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["config"]["sizes"] == [16, 8, 4]
    assert "bench: case 1/1: sgd, bias" in err


# --- what a new user trips on (the users' round) and the faults' third round ------------------


def _one(capsys, argv: list[str], code: int) -> str:
    """Run `argv`; it must exit `code` with one line on stderr; that line."""
    got = main(argv)
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_a_batch_larger_than_the_data_is_the_data(capsys, tmp_path):
    """--batch-size 1000000 on 1 438 training rows: one warning line, one step an epoch, and
    config.toml records the rows a step really had (buffers are sized from them)."""
    argv = ["train", "--batch-size", "1000000", "--epochs", "2", "--hidden", "16"]
    assert main([*argv, "--run-dir", str(tmp_path), "--name", "b", "--json"]) == 0
    cap = capsys.readouterr()
    warns = [line for line in cap.err.splitlines() if line.startswith("warning:")]
    assert warns == [
        "warning: train.batch_size=1000000 exceeds the 1438 training rows of digits; using 1438 "
        "(one step an epoch)"
    ]
    assert json.loads(cap.out)["steps"] == 2
    assert "batch_size = 1438" in (tmp_path / "b" / "config.toml").read_text()


def test_plan_says_when_the_budget_does_not_fit(capsys):
    """plan with a budget train would refuse says so (and that train refuses it); one that fits
    says that too; --json carries it."""
    assert main(["plan", "--memory-budget", "100KiB", "--stages", "1"]) == 0
    out = capsys.readouterr().out
    assert "memory budget 100KiB: the plan does not fit" in out and "would refuse it" in out
    assert main(["plan", "--memory-budget", "64MiB", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["memory_budget"]
    assert got["fits"] and got["bytes"] == 64 << 20 and got["problem"] is None


@pytest.mark.parametrize("where", ["/proc/graphpart-nope", "{tmp}/a_file", "{tmp}/a_file/x"])
def test_a_run_dir_that_cannot_be_made_is_bad_input(capsys, tmp_path, where):
    """--run-dir in /proc, onto a file or under one: exit 2, one line naming it."""
    (tmp_path / "a_file").write_text("mine")
    where = where.format(tmp=tmp_path)
    err = _one(capsys, ["train", "--epochs", "1", "--run-dir", where], 2)
    assert f"run.dir={where!r}" in err
    assert (tmp_path / "a_file").read_text() == "mine"


def test_one_class_data_advice_names_what_works(capsys, tmp_path):
    """Labels all 0: the advice names --n-classes and --loss mse, and --n-classes 2 trains."""
    X = np.random.default_rng(0).standard_normal((40, 3))
    path = _npz(tmp_path, "oneclass.npz", X=X, y=np.zeros(40, dtype=int))
    err = _one(capsys, ["train", "--data", path, "--run-dir", str(tmp_path)], 2)
    assert "--n-classes N" in err and "--loss mse" in err and "task=" not in err
    argv = ["train", "--data", path, "--n-classes", "2", "--epochs", "1", "--hidden", "4"]
    assert main([*argv, "--run-dir", str(tmp_path), "--name", "two", "--json"]) == 0
    capsys.readouterr()
    with np.load(tmp_path / "two" / "params.npz") as z:
        assert z["W2"].shape == (2, 4)  # (outputs, inputs): two classes


def test_n_classes_applies_to_npz_and_labels_outside_are_refused(capsys, tmp_path):
    """A label 11 in 10-class data: refused without --n-classes (class 10 has no sample) and
    with --n-classes 10 (out of range), naming the label."""
    X = np.random.default_rng(0).standard_normal((60, 3))
    y = np.arange(60) % 10
    y[7] = 11
    path = _npz(tmp_path, "eleven.npz", X=X, y=y)
    err = _one(capsys, ["train", "--data", path, "--run-dir", str(tmp_path)], 2)
    assert "class(es) 10 have no sample" in err
    err = _one(
        capsys, ["train", "--data", path, "--n-classes", "10", "--run-dir", str(tmp_path)], 2
    )
    assert "y[7] = 11 is out of range" in err and "n_classes=10" in err


def _interrupted_run(tmp_path: Path, name: str, monkeypatch, at_step: int) -> Path:
    """A run whose driver got Ctrl-C at step `at_step` (in process)."""
    from graphpart.run import trainer as train_mod

    real, seen = train_mod.make_engine, [0]

    def make(s, params, keep_events=False):
        eng = real(s, params, keep_events)
        step = eng.step

        def stepping(x, y, update=True):
            seen[0] += 1
            if seen[0] == at_step:
                raise KeyboardInterrupt
            return step(x, y, update)

        eng.step = stepping
        return eng

    with monkeypatch.context() as m:
        m.setattr(train_mod, "make_engine", make)
        argv = ["train", "--epochs", "6", "--hidden", "16", "--run-dir", str(tmp_path)]
        assert main([*argv, "--name", name]) == 130
    return tmp_path / name


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_an_interrupt_says_what_resume_will_do_and_it_does(capsys, tmp_path, monkeypatch):
    """Ctrl-C before the first checkpoint: the line says there is none and that --resume
    starts again; it does, to a completed run. After epoch 4, --resume --epochs 3 is refused
    (4 were trained); gp.load gives the advice once."""
    import graphpart as gp
    from graphpart.errors import RunError

    run = _interrupted_run(tmp_path, "c", monkeypatch, at_step=5)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("graphpart: interrupted: stopped by Ctrl-C; no epoch had ended")
    assert f"`graphpart train --resume {run}` starts the run again" in err
    with pytest.raises(RunError) as e:
        gp.load(run)
    assert str(e.value).count("--resume") == 1
    assert main(["train", "--resume", str(run), "--epochs", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "completed"

    run = _interrupted_run(tmp_path, "r", monkeypatch, at_step=23 * 4 + 3)  # in epoch 5
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "the checkpoint of epoch 4 is kept: continue with" in err
    err = _one(capsys, ["train", "--resume", str(run), "--epochs", "3"], 2)
    assert "has trained 4 epoch(s) and train.epochs=3" in err
    assert main(["train", "--resume", str(run), "--epochs", "4", "--json"]) == 0  # complete it
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "completed" and out["epochs"] == 4 and out["steps"] == 4 * 23


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_resume_checks_what_it_changes_before_writing(capsys, tmp_path):
    """Another optimizer on resume, or a seed edited into config.toml by hand: one line, and
    config.toml is left as it was."""
    base = ["train", "--json", "--epochs", "1", "--hidden", "16", "--run-dir", str(tmp_path)]
    assert main([*base, "--name", "r"]) == 0
    capsys.readouterr()
    run = tmp_path / "r"
    before = (run / "config.toml").read_bytes()
    err = _one(capsys, ["train", "--resume", str(run), "--epochs", "2", "--optimizer", "sgd"], 2)
    assert "train.optimizer was 'adam', now 'sgd'" in err
    assert (run / "config.toml").read_bytes() == before
    (run / "config.toml").write_text(before.decode().replace("seed = 0", "seed = 5"))
    err = _one(capsys, ["train", "--resume", str(run), "--epochs", "2"], 2)
    assert "train.seed made the checkpoint with 0, now 5" in err


@pytest.mark.slow  # in process, but a second or more: the slow lane
def test_divergence_exits_1_in_one_line(capsys, tmp_path):
    """Adam at lr 1 on digits: the loss explodes within steps; exit 1 (the run's fault, as
    docs/reliability.md says), one line naming the step."""
    argv = ["train", "--optimizer", "adam", "--lr", "1", "--epochs", "10"]
    err = _one(capsys, [*argv, "--run-dir", str(tmp_path)], 1)
    assert err.startswith("graphpart: error: the loss exploded: step ")


def test_help_shows_every_default_one_way(capsys):
    """Every option of train, plan, compare and profile that has a default shows it, written
    "(default: X)"; compare shows its own micro-batch default and no --schedule."""
    import re

    for command in ("train", "plan", "compare", "profile"):
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert not re.search(r"\(default \d", text), command
        options = re.findall(r"(--[a-z-]+) [A-Z_{][^ ]*( .*?)(?= --[a-z-]+ [A-Z_{]|$)", text)
        assert len(options) > 20, command  # the help was read, option by option
        for flag, help_text in options:
            if flag not in ("--set", "--resume", "--target", "--report"):
                assert "default" in help_text, (command, flag, help_text)
        if command == "compare":
            assert "--schedule" not in text and "(default: 2 x --devices" in text
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "auto (the one this machine's Ray records name) | host:port | ray://host:port" in text


def _wait_for(pred, what: str, limit: float = 120.0) -> None:
    import time

    end = time.time() + limit
    while not pred():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "stages", [pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.ray)]
)
def test_a_second_writer_is_refused_and_sigterm_is_an_interrupt(capsys, tmp_path, stages):
    """While `graphpart train` runs: `--resume` of its directory is refused in one line naming
    its pid (and the run goes on); SIGTERM then ends it like Ctrl-C: exit 143, one line of
    ours saying what is kept, state "interrupted", --resume goes on from the checkpoint."""
    import signal

    run = tmp_path / "r"
    argv = ["train", "--epochs", "500", "--hidden", "16", "--stages", str(stages)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen(
        [sys.executable, "-m", "graphpart.cli", *argv, "--run-dir", str(tmp_path), "--name", "r"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: (run / "checkpoint.npz").exists(), "the first checkpoint")
        err = _one(capsys, ["train", "--resume", str(run), "--epochs", "600"], 2)
        assert f"is being written by pid {p.pid} on " in err
        p.send_signal(signal.SIGTERM)
        _, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, stderr
    ours = [line for line in stderr.splitlines() if line.startswith("graphpart:")]
    assert len(ours) == 1 and ours[0].startswith("graphpart: interrupted: stopped by SIGTERM;")
    assert "Traceback" not in stderr
    st = json.loads((run / "summary.json").read_text())
    assert st["state"] == "interrupted" and "is kept" in st["message"]
    epochs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    done = [r["epoch"] for r in epochs if r["kind"] == "epoch"]
    assert done == list(range(1, len(done) + 1))  # one writer: each epoch once, in order
    argv = ["train", "--resume", str(run), "--epochs", str(max(done) + 1), "--stages", "1"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == max(done) + 1
