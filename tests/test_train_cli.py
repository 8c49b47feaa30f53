"""`python -m mpidsgd.train` as a user runs it: invalid input exits 2 with one
line on rank 0 (serially and under mpiexec -n 4), a failing rank aborts the
whole job, the built-in quickstart equals jobs/quickstart.toml.

Every mpiexec here runs under MPIEXEC_TIMEOUT (set by conftest.py) and a
subprocess timeout on top; those are the only clocks.
"""
import json
import os
import subprocess
import sys
import tomllib

import numpy as np
import pytest

from mpidsgd import train

from cli_launch import TINY, launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BAD = [
    (["--set", "run.bogus=1"], "unknown config key run.bogus"),
    (["--set", "algo.name=nope"], "algo.name: unknown algorithm 'nope'"),
    (["--set", "data.batch_size=\"big\""], "data.batch_size must be an integer"),
    (["--set", "algo.lr=-1"], "algo.lr must be >= 0"),
    (["--set", "data.name=\"file\"", "--set", "data.path=\"/nonexistent/x.npz\""], "/nonexistent/x.npz"),
    (["--config", "/nonexistent/job.toml"], "config file /nonexistent/job.toml does not exist"),
    # algorithm options are checked the same way
    (["--set", "algo.name=centralvr", "--set", "algo.mode=bogus"], "algo.mode"),
    (["--set", 'algo.name="palsgd"', "--set", "algo.p=1.5"], "algo.p"),
    (["--set", 'algo.name="oktopk"', "--set", "algo.density=1.5"], "algo.density"),
    (["--set", 'algo.name="oktopk"', "--set", "algo.throttle=0"], "algo.throttle"),
    (["--set", 'algo.name="oktopk"', "--set", "algo.threshold_every=0"], "algo.threshold_every"),
    (["--set", 'algo.name="oktopk"', "--set", "algo.region_every=0"], "algo.region_every"),
    # non-finite floats, an empty step budget, a model no node can hold
    (["--set", "algo.lr=inf"], "algo.lr must be a finite number, got inf"),
    (["--set", "algo.lr=nan"], "algo.lr must be a finite number, got nan"),
    (["--set", "run.epochs=0"], "run.steps and run.epochs are both 0: set run.steps"),
    (["--set", "model.hidden=[300000,300000]"],
     "model.hidden: model mlp has 90,022,800,010 parameters; parameters and gradient need 720.2 GB "
     "(720,182,400,080 bytes)"),
]


def check_one_line(res, expect):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr          # rank 0 only, no traceback
    assert lines[0].startswith("mpidsgd: error: ") and expect in lines[0], lines[0]
    assert "Traceback" not in res.stdout + res.stderr


@pytest.mark.parametrize("args,expect", BAD)
def test_invalid_input_serial_exit_2_one_line(args, expect, tmp_path):
    check_one_line(launch(args, cwd=tmp_path), expect)


def file_args(path, *more):
    return ["--set", 'data.name="file"', "--set", f'data.path="{path}"', *more]


@pytest.mark.parametrize("name,expect", [("x.npy", "unsupported extension .npy"),
                                         ("r.npz", "cannot read as .npz (no zip header")])
def test_npy_and_random_npz_exit_2_one_line(tmp_path, name, expect):
    if name.endswith(".npy"):
        np.save(tmp_path / name, np.zeros((8, 3)))
    else:
        (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(2048))
    res = launch(file_args(tmp_path / name, "--set", f'run.out_dir="{tmp_path}/out"'), cwd=tmp_path)
    check_one_line(res, expect)
    assert "pickle" not in res.stderr and not (tmp_path / "out").exists()   # nothing written


def unusable_out_dirs(tmp_path):
    """(out_dir, expected words): under a file, and a folder nobody may write
    (root writes anywhere a mode bit forbids: then a sysfs path)."""
    tmp_path.mkdir()
    (tmp_path / "file").write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    locked = "/sys/mpidsgd-out" if os.geteuid() == 0 else str(ro / "out")
    return [(str(tmp_path / "file" / "out"), "is under the file"), (locked, "is not writable")]


def test_unusable_out_dir_exit_2_at_start_serial_and_4_ranks(tmp_path):
    for n in (None, 4):
        for out, expect in unusable_out_dirs(tmp_path / str(n)):
            res = launch([*TINY, "--set", f'run.out_dir="{out}"'], n=n, cwd=tmp_path)
            check_one_line(res, f"run.out_dir {out} {expect}")
            assert "mpidsgd: spardl on" not in res.stdout          # stopped before training


def test_cuda_without_cupy_names_the_extra(monkeypatch):
    from mpidsgd.config import ConfigError
    from mpidsgd.startup import check_device
    cfg, _ = train.load_cli(None, ["run.device=cuda"])
    monkeypatch.setitem(sys.modules, "cupy", None)            # import cupy -> ImportError
    with pytest.raises(ConfigError, match=r"run.device = cuda needs CuPy.*\.\[gpu\]"):
        check_device(cfg)


def test_file_regression_at_4_ranks_stays_regression(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 6))
    y = np.round(150 + 40 * X @ rng.standard_normal(6))      # whole-number targets
    np.savez(tmp_path / "d.npz", X=X, y=y)
    out = tmp_path / "out"
    res = launch(file_args(tmp_path / "d.npz", "--set", "model.name=ridge", "--set", "algo.name=sgd",
                           "--set", "run.epochs=2", "--set", f'run.out_dir="{out}"'), n=4, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("mpidsgd: task regression (data.task = auto, model ridge") == 1
    assert res.stdout.count(f"mpidsgd: outputs in {out}") == 1
    s = json.loads((out / "summary.json").read_text())
    assert s["final_test_accuracy"] is None and s["final_test_mse"] is not None


def test_file_regression_job_runs_on_the_documented_example(tmp_path):
    """jobs/file_regression.toml on the file its header comment makes: the
    targets are whole numbers and stay regression targets (MSE near the
    rounding noise 1/12 after a few epochs)."""
    job = os.path.join(ROOT, "jobs", "file_regression.toml")
    make = [ln.split("#", 1)[1].strip() for ln in open(job) if "np.savez(" in ln][0]
    subprocess.run(make.replace("runs/regression.npz", str(tmp_path / "r.npz")), shell=True,
                   check=True, cwd=tmp_path, timeout=120, executable="/bin/bash",
                   env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]})
    res = launch(["--config", job, "--set", f'data.path="{tmp_path / "r.npz"}"',
                  "--set", f'run.out_dir="{tmp_path / "out"}"'], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["final_test_accuracy"] is None and s["final_test_mse"] < 0.2


def test_malformed_data_file_exit_2(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive")
    res = launch(["--set", "data.name=\"file\"", "--set", f"data.path=\"{bad}\""], cwd=tmp_path)
    check_one_line(res, "bad.npz")


def test_invalid_input_under_mpiexec_4_same_decision_everywhere(tmp_path):
    # the bad key reaches every rank; all four exit 2 and only rank 0 speaks
    for args, expect in (BAD[0], BAD[4]):
        check_one_line(launch(args, n=4, cwd=tmp_path), expect)


def test_world_size_expectation(tmp_path):
    env_args = ["--set", "run.steps=1"]
    os.environ["MPIDSGD_EXPECT_WORLD_SIZE"] = "3"
    try:
        res = launch(env_args, n=2, cwd=tmp_path)
    finally:
        del os.environ["MPIDSGD_EXPECT_WORLD_SIZE"]
    check_one_line(res, "MPI world size 2 differs from MPIDSGD_EXPECT_WORLD_SIZE=3")


def test_exception_on_one_rank_aborts_the_job(tmp_path):
    res = launch([*TINY, "--set", "run.steps=50", "--set", "debug.fail_at_step=3",
                  "--set", "debug.fail_rank=2", "--set", f"run.out_dir=\"{tmp_path}\""],
                 n=4, cwd=tmp_path)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "injected fault at step 3 on rank 2" in out
    assert "mpidsgd: rank 2 failed" in out
    # the run never got to the end: no summary was written
    assert not (tmp_path / "summary.json").exists()


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Two fresh serial TINY runs into one folder, once for the module: the
    first run's result, summary.json, config.toml and metrics.jsonl, and the
    second's result and metrics.jsonl."""
    out = tmp_path_factory.mktemp("small")
    first = launch([*TINY, "--set", f"run.out_dir=\"{out}\""], cwd=out)
    files = {name: (out / name).read_text() if (out / name).exists() else None
             for name in ("summary.json", "config.toml", "metrics.jsonl")}
    second = launch([*TINY, "--set", f"run.out_dir=\"{out}\""], cwd=out)
    again = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else None
    return first, files, second, again


def test_small_serial_run_writes_its_summary(small_runs):
    res, files, _, _ = small_runs
    assert res.returncode == 0, res.stderr
    s = json.loads(files["summary.json"])
    assert s["steps"] == 6 and s["world_size"] == 1 and s["bytes_sent_per_rank"] == 0


def test_small_serial_run_writes_the_resolved_config(small_runs):
    res, files, _, _ = small_runs
    assert res.returncode == 0, res.stderr
    resolved = tomllib.loads(files["config.toml"])
    assert resolved["data"]["n_samples"] == 512 and resolved["algo"]["name"] == train.QUICKSTART["algo"]["name"]


def test_small_serial_run_prints_the_final_line(small_runs):
    assert "final" in small_runs[0].stdout


def test_a_second_fresh_run_into_the_folder_replaces_the_metrics(small_runs):
    # as it replaces config.toml and summary.json (only --resume continues them)
    _, files, res, again = small_runs
    assert res.returncode == 0, res.stderr
    assert files["metrics.jsonl"].count("\n") == again.count("\n") > 0


def test_quickstart_toml_spells_out_the_builtin_default():
    with open(os.path.join(ROOT, "jobs", "quickstart.toml"), "rb") as fh:
        job = tomllib.load(fh)
    assert job == train.QUICKSTART


def test_help_lists_options():
    res = subprocess.run([sys.executable, "-m", "mpidsgd.train", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for opt in ("--config", "--set", "--resume", "--print-config"):
        assert opt in res.stdout
    text = " ".join(res.stdout.split())
    assert "A run without --config is the built-in quickstart" in text
    assert "takes the quickstart's value" in text


def test_an_empty_config_file_runs_the_quickstart_budget(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    res = launch(["--config", str(tmp_path / "empty.toml"), "--print-config"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg = tomllib.loads(res.stdout)
    assert cfg["run"]["epochs"] == train.QUICKSTART["run"]["epochs"]
    assert cfg["run"]["out_dir"] == train.QUICKSTART["run"]["out_dir"]


def test_vr_family_run_drops_the_quickstart_momentum_with_a_note(tmp_path):
    res = launch([*TINY, "--set", "algo.name=saga", "--set", f'run.out_dir="{tmp_path}"'], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "mpidsgd: note: saga applies its own update, so the quickstart's algo.momentum = 0.9 " \
           "is set to 0" in res.stdout
    assert tomllib.loads((tmp_path / "config.toml").read_text())["algo"]["momentum"] == 0.0


def test_print_config_resolves_overrides(tmp_path):
    res = launch(["--set", "algo.lr=0.125", "--print-config"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg = tomllib.loads(res.stdout)
    assert cfg["algo"]["lr"] == 0.125
    assert np.isclose(cfg["run"]["epochs"], train.QUICKSTART["run"]["epochs"])


def test_entry_points_default_to_one_thread_per_rank_unless_user_says():
    from mpidsgd.threads import POOLS
    base = {k: v for k, v in os.environ.items() if k not in POOLS}
    code = ("import os, mpidsgd.train, numpy; "
            "print(' '.join(os.environ[v] for v in %r))" % (POOLS,))
    res = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True,
                         text=True, timeout=120)
    assert res.stdout.split() == ["1"] * len(POOLS), res.stderr
    res = subprocess.run([sys.executable, "-c", code], env={**base, "OMP_NUM_THREADS": "3",
                         "NUMBA_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["3", "3", "3", "3", "2"], res.stderr
