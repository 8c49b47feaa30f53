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


def write_suite(folder):
    """The mini suite (2 variants x 2 seeds) and its base job, in `folder`."""
    (folder / "base.toml").write_text(BASE)
    path = folder / "mini.toml"
    path.write_text(SUITE.format(base=folder / "base.toml"))
    return path


@pytest.fixture
def suite(tmp_path):
    return write_suite(tmp_path)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The array job by hand, once for the module: --count, a --merge before
    any job ran, each job's --argv run by `python -m mpidsgd.train`, then
    --merge into m.json and m.md. Every step's result is kept for the tests."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    sel = ["--suite", str(write_suite(tmp_path)), "--out", str(tmp_path / "out"),
           "--only", "sgd,sgd lr=0.01"]
    res = {"dir": tmp_path, "count": bench(*sel, "--count", cwd=tmp_path),
           "early_merge": bench(*sel, "--merge", cwd=tmp_path), "jobs": [], "outs": []}
    for i in range(4):
        r = bench(*sel, "--argv", str(i), cwd=tmp_path)
        argv = r.stdout.splitlines()
        t = subprocess.run([sys.executable, "-m", "mpidsgd.train", *argv],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        res["jobs"].append((r, t))
        res["outs"].append(next((a for a in argv if a.startswith("run.out_dir=")), "=?")
                           .split("=", 1)[1].strip('"'))
    res["merge"] = bench(*sel, "--merge", "--json", str(tmp_path / "m.json"),
                         "--table", str(tmp_path / "m.md"), cwd=tmp_path)
    return res


def merged(sweep):
    """The merge's records; fails the test if the merge failed."""
    assert sweep["merge"].returncode == 0, sweep["merge"].stderr
    return json.loads((sweep["dir"] / "m.json").read_text())


def test_count_is_the_number_of_jobs(sweep):
    r = sweep["count"]
    assert r.returncode == 0 and r.stdout.strip() == "4", r.stderr


def test_merge_before_the_jobs_ran_is_one_error_line(sweep):
    r = sweep["early_merge"]
    assert r.returncode == 2 and r.stderr.startswith("mpidsgd: error: --merge:"), r.stderr


def test_argv_of_each_job_trains(sweep):
    for r, t in sweep["jobs"]:
        assert r.returncode == 0, r.stderr
        assert t.returncode == 0, t.stderr


def test_jobs_run_in_variant_seed_order_each_in_its_own_folder(sweep):
    assert [o.split("/")[-2:] for o in sweep["outs"]] == [
        ["sgd", "seed0"], ["sgd", "seed1"], ["sgd_lr_0_01", "seed0"], ["sgd_lr_0_01", "seed1"]]


def test_merge_records_are_the_job_folders_summaries(sweep):
    records = merged(sweep)
    assert [(x["run"], x["seed"]) for x in records] == [
        ("sgd", 0), ("sgd", 1), ("sgd lr=0.01", 0), ("sgd lr=0.01", 1)]
    for x, o in zip(records, sweep["outs"]):
        summary = json.loads((sweep["dir"] / o / "summary.json").read_text())
        assert x["summary"] == summary and x["P"] == 1 and summary["steps"] == 6
        assert x["final"] == summary["final_test_accuracy"]


def test_the_two_seeds_of_a_run_differ(sweep):
    # each task really ran its own job
    records = merged(sweep)
    assert records[0]["summary"]["final_train_loss"] != records[1]["summary"]["final_train_loss"]


def test_merge_table_has_one_row_per_variant_over_two_seeds(sweep):
    merged(sweep)
    table = (sweep["dir"] / "m.md").read_text().splitlines()
    assert [ln.split("|")[2].strip() for ln in table[2:]] == ["sgd", "sgd lr=0.01"]
    assert all(ln.split("|")[3].strip() == "2" for ln in table[2:])


def test_argv_out_of_range_is_one_line_exit_2(suite, tmp_path):
    r = bench("--suite", str(suite), "--argv", "4", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == "mpidsgd: error: --argv 4: the selection has jobs 0..3\n"
