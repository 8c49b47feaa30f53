"""`python -m mpidsgd.bench train --count | --argv I | --merge`, the pieces
slurm/sweep.sbatch runs as array tasks: job I's arguments start a real
training run into its own out_dir, and the merge builds the same records and
table as a suite run, from those folders alone. Serial runs (one rank), a
tiny task; .ci/slurm runs the template itself on a live cluster."""
import json
import subprocess
import sys

import pytest

SUITE = """
[suite]
base = "{base}"
nprocs = 1
seeds = [0, 1]
metric = "test_accuracy"
target = 0.0
set = ["run.steps=6"]
[[runs]]
label = "sgd"
set = ["algo.name='sgd'"]
[[runs]]
label = "sgd lr=0.01"
set = ["algo.name='sgd'", "algo.lr=0.01"]
"""
BASE = """
[run]
eval_every = 3
[data]
n_samples = 256
n_test = 64
n_features = 8
n_classes = 3
[model]
name = "mlp"
hidden = [8]
"""


def bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "mpidsgd.bench", "train", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def suite(tmp_path):
    (tmp_path / "base.toml").write_text(BASE)
    path = tmp_path / "mini.toml"
    path.write_text(SUITE.format(base=tmp_path / "base.toml"))
    return path


def test_argv_runs_each_job_into_its_own_folder_and_merge_writes_the_table(suite, tmp_path):
    sel = ["--suite", str(suite), "--out", str(tmp_path / "out"), "--only", "sgd,sgd lr=0.01"]
    r = bench(*sel, "--count", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "4", r.stderr
    # merging before the jobs ran: one error line naming the missing file
    r = bench(*sel, "--merge", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("mpidsgd: error: --merge:"), r.stderr
    outs = []
    for i in range(4):
        r = bench(*sel, "--argv", str(i), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        argv = r.stdout.splitlines()
        t = subprocess.run([sys.executable, "-m", "mpidsgd.train", *argv],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert t.returncode == 0, t.stderr
        outs.append(next(a for a in argv if a.startswith("run.out_dir=")).split("=", 1)[1].strip('"'))
    # jobs in (variant, run, seed) order, each in its own folder
    assert [o.split("/")[-2:] for o in outs] == [
        ["sgd", "seed0"], ["sgd", "seed1"], ["sgd_lr_0_01", "seed0"], ["sgd_lr_0_01", "seed1"]]
    r = bench(*sel, "--merge", "--json", str(tmp_path / "m.json"),
              "--table", str(tmp_path / "m.md"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = json.loads((tmp_path / "m.json").read_text())
    assert [(x["run"], x["seed"]) for x in records] == [
        ("sgd", 0), ("sgd", 1), ("sgd lr=0.01", 0), ("sgd lr=0.01", 1)]
    for x, o in zip(records, outs):
        summary = json.loads((tmp_path / o / "summary.json").read_text())
        assert x["summary"] == summary and x["P"] == 1 and summary["steps"] == 6
        assert x["final"] == summary["final_test_accuracy"]
    # the two seeds of a run differ (each task really ran its own job)
    assert records[0]["summary"]["final_train_loss"] != records[1]["summary"]["final_train_loss"]
    table = (tmp_path / "m.md").read_text().splitlines()
    assert [ln.split("|")[2].strip() for ln in table[2:]] == ["sgd", "sgd lr=0.01"]
    assert all(ln.split("|")[3].strip() == "2" for ln in table[2:])


def test_argv_out_of_range_is_one_line_exit_2(suite, tmp_path):
    r = bench("--suite", str(suite), "--argv", "4", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "mpidsgd: error: --argv 4: the selection has jobs 0..3\n"
