"""Training accuracy of `spardl` against dense `sgd` on the quickstart task.

The claim (issue 5): spardl at density 1% reaches, as a mean over 3 seeds,
the dense sgd test accuracy within 1 percentage point, at equal samples
processed. Both algorithms run the full built-in quickstart (train.QUICKSTART,
read at test time, so a retuned quickstart is tested as it is) through the
train entry point, 4 ranks each, seeds 0, 1, 2: six mpiexec jobs, started
together so that one job's waits overlap another's work (2-core machine).
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

P = 4
SEEDS = (0, 1, 2)
TIMEOUT = 1500


def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def start(algo, seed, out):
    sets = [f"algo.name='{algo}'", f"run.seed={seed}", f"run.out_dir='{out}'",
            "run.progress=false"]
    if algo == "spardl":
        sets.append("algo.density=0.01")
    cmd = [mpiexec(), "-n", str(P), sys.executable, "-m", "mpidsgd.train"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "MPIEXEC_TIMEOUT": str(TIMEOUT), "NUMBA_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_spardl_reaches_sgd_accuracy_on_quickstart_mean_of_3_seeds(tmp_path):
    jobs = {(a, s): start(a, s, tmp_path / f"{a}{s}") for a in ("sgd", "spardl") for s in SEEDS}
    deadline = time.monotonic() + TIMEOUT + 60
    for key, proc in jobs.items():
        out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        assert proc.returncode == 0, f"{key} failed:\n{err[-3000:]}"
    summ = {k: json.loads((tmp_path / f"{k[0]}{k[1]}" / "summary.json").read_text()) for k in jobs}
    # the runs are the quickstart, at equal samples processed
    quick = train.QUICKSTART
    for (algo, seed), s in summ.items():
        assert s["algorithm"] == algo and s["world_size"] == P
        cfg = (tmp_path / f"{algo}{seed}" / "config.toml").read_text()
        assert f"n_samples = {quick['data']['n_samples']}" in cfg
        assert f"hidden = {quick['model']['hidden']}".replace("'", "") in cfg
    samples = {s["samples_processed"] for s in summ.values()}
    assert len(samples) == 1, samples
    assert summ[("spardl", 0)]["bytes_sent_per_rank"] < 0.1 * summ[("sgd", 0)]["bytes_sent_per_rank"]
    acc = {a: sum(summ[(a, s)]["final_test_accuracy"] for s in SEEDS) / len(SEEDS)
           for a in ("sgd", "spardl")}
    detail = {f"{a}{s}": round(summ[(a, s)]["final_test_accuracy"], 4) for a, s in summ}
    assert acc["spardl"] >= acc["sgd"] - 0.01, f"means {acc}, runs {detail}"
