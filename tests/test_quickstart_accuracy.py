"""Training accuracy of the communication-efficient algorithms against dense
`sgd` on the quickstart task, at equal samples processed.

The claims:
- spardl at density 1% reaches, as a mean over 3 seeds, the dense sgd test
  accuracy within 1 percentage point (issue 5); so does oktopk (issue 17);
- palsgd with H = 32 does the same (issue 7); its mixing steps draw no
  batch, so it runs epochs / (1 - p) epochs to process the same samples;
- gosgd ends within 2 points of sgd in deterministic mode, and as a mean
  over 3 seeds in free-running mode (issue 6). Free-running ranks need a
  core each to push and poll on time; here 52 ranks share 2 cores, so each
  gradient carries 2 ms of emulated compute (comm.emulate), during which the
  rank sleeps and the others run: the 4 ranks of a job then progress at
  comparable rates, as on a cluster.
Every run is the full built-in quickstart (train.QUICKSTART, read at test
time, so a retuned quickstart is tested as it is) through the train entry
point, 4 ranks each: sixteen mpiexec jobs, started together so that one job's
waits overlap another's work (2-core machine).
MPICH ranks yield the core while they wait (MPIR_CVAR_ENABLE_HEAVY_YIELD):
24 busy-polling ranks on two cores would otherwise mostly spin.
"""
import json
import os
import subprocess
import sys
import time

import pytest

from mpidsgd import train
from mpidsgd.algorithms import REGISTRY

P = 4
SEEDS = (0, 1, 2)
TIMEOUT = 1500


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def start(algo, seed, out):
    free = algo == "gosgd-free"
    algo = "gosgd" if free else algo
    sets = [f"algo.name='{algo}'", f"run.seed={seed}", f"run.out_dir='{out}'",
            "run.progress=false"]
    if algo in ("spardl", "oktopk"):
        sets.append("algo.density=0.01")
    if algo == "palsgd":
        p = REGISTRY["palsgd"].Options().p
        sets += ["algo.H=32", f"run.epochs={train.QUICKSTART['run']['epochs'] / (1 - p)!r}"]
    if algo == "gosgd":
        sets += ["comm.emulate.compute='fixed'", "comm.emulate.compute_s=0.002"] if free \
            else ["algo.deterministic=true"]
    cmd = [mpiexec(), "-n", str(P), sys.executable, "-m", "mpidsgd.train"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "MPIEXEC_TIMEOUT": str(TIMEOUT), "NUMBA_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


RUNS = [(a, s) for a in ("sgd", "spardl", "oktopk", "palsgd", "gosgd-free")
        for s in SEEDS] + [("gosgd", 0)]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of RUNS, started together and awaited once for the module:
    (folder, summary.json of each (algo, seed))."""
    tmp_path = tmp_path_factory.mktemp("quickstart")
    jobs = {(a, s): start(a, s, tmp_path / f"{a}{s}") for a, s in RUNS}
    deadline = time.monotonic() + TIMEOUT + 60
    for key, proc in jobs.items():
        out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        assert proc.returncode == 0, f"{key} failed:\n{err[-3000:]}"
    summ = {k: json.loads((tmp_path / f"{k[0]}{k[1]}" / "summary.json").read_text()) for k in jobs}
    return tmp_path, summ


def detail(summ):
    """Every run's final test accuracy, for the failure messages."""
    return {f"{a}{s}": round(summ[(a, s)]["final_test_accuracy"], 4) for a, s in summ}


def mean_accuracy(summ, algo):
    return sum(summ[(algo, s)]["final_test_accuracy"] for s in SEEDS) / len(SEEDS)


def test_every_run_is_the_built_in_quickstart_on_4_ranks(runs):
    tmp_path, summ = runs
    quick = train.QUICKSTART
    for (algo, seed), s in summ.items():
        assert s["algorithm"] == algo.replace("-free", "") and s["world_size"] == P
        cfg = (tmp_path / f"{algo}{seed}" / "config.toml").read_text()
        assert f"n_samples = {quick['data']['n_samples']}" in cfg
        assert f"hidden = {quick['model']['hidden']}".replace("'", "") in cfg


def test_every_run_processes_the_samples_of_sgd(runs):
    # equal samples: exactly for the lock-step algorithms; palsgd's mixing
    # draws are random, so its sample count is equal only in expectation
    summ = runs[1]
    ref = summ[("sgd", 0)]["samples_processed"]
    for (algo, seed), s in summ.items():
        if algo == "palsgd":
            assert abs(s["samples_processed"] / ref - 1) < 0.02, (algo, seed, s["samples_processed"], ref)
        else:
            assert s["samples_processed"] == ref, (algo, seed, s["samples_processed"], ref)


@pytest.mark.parametrize("algo", ["spardl", "oktopk", "palsgd"])
def test_sends_under_a_tenth_of_the_bytes_of_sgd(runs, algo):
    summ = runs[1]
    assert summ[(algo, 0)]["bytes_sent_per_rank"] < 0.1 * summ[("sgd", 0)]["bytes_sent_per_rank"]


@pytest.mark.parametrize("algo", ["spardl", "oktopk", "palsgd"])
def test_mean_accuracy_over_3_seeds_is_within_1_point_of_sgd(runs, algo):
    summ = runs[1]
    acc = {a: mean_accuracy(summ, a) for a in ("sgd", algo)}
    assert acc[algo] >= acc["sgd"] - 0.01, f"means {acc}, runs {detail(summ)}"


def test_deterministic_gosgd_is_within_2_points_of_sgd(runs):
    summ = runs[1]
    assert summ[("gosgd", 0)]["final_test_accuracy"] >= summ[("sgd", 0)]["final_test_accuracy"] - 0.02, \
        detail(summ)


def test_free_running_gosgd_mean_over_3_seeds_is_within_2_points_of_sgd(runs):
    summ = runs[1]
    acc = {a: mean_accuracy(summ, a) for a in ("sgd", "gosgd-free")}
    assert acc["gosgd-free"] >= acc["sgd"] - 0.02, f"means {acc}, runs {detail(summ)}"
