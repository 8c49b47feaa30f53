"""The staleness law of asgd under MPI: with exponential_total compute
emulation and M compute groups of one rank each (M + 1 ranks, oversubscribed),
the staleness tau is Geometric(1/M): P(tau = 0) within 10 % of 1/M and
P(tau = 1) within 10 % of (1/M)(1 - 1/M).

The mean staleness is M - 1 under any delay law, so it is not checked. With
equal compute times instead (comm.emulate.compute = "fixed") tau is M - 1
almost always and the first check fails; a fixed part of a tenth of the
mean on top of the exponential delay moves P(tau = 0) at M = 4 from 0.25 to
about 0.19 (tests/refs/async_sim.py), outside the band.

The model is tiny, so real compute is far below compute_s; the round trip to
the server is inside each draw (ComputeEmulation.chain). The three jobs run
at the same time (their ranks mostly sleep); the update counts give binomial
standard errors of at most a third of each band.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["data.n_samples=4096", "data.n_test=64", "data.n_features=8", "model.hidden=[8]",
        "data.batch_size=8", "run.eval_every=0", "algo.lr=0.01", "algo.momentum=0.0",
        "run.progress=false"]
# groups M -> (server updates, compute_s): the binomial standard error of
# P(tau=0) and P(tau=1) is at most a third of its 10 % band (P(tau=1) at
# M = 2 is the tightest). The bias a round trip leaves (a draw shorter than
# it cannot be honoured) grows with M, so larger M get a longer mean; each
# job takes about updates x compute_s / M = 54, 59 and 64 s.
CASES = {2: (2700, 0.04), 4: (3900, 0.06), 8: (7300, 0.07)}


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else "mpiexec"


def start_asgd(out, M, steps, compute_s, compute="exponential_total", timeout=200):
    sets = TINY + ["algo.name='asgd'", f"algo.groups={M}", f"run.steps={steps}",
                   f"comm.emulate.compute='{compute}'", f"comm.emulate.compute_s={compute_s}",
                   f"run.out_dir='{out}'"]
    cmd = [_mpiexec(), "-n", str(M + 1), sys.executable, "-m", "mpidsgd.train"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "MPIEXEC_TIMEOUT": str(timeout)}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc, out, timeout=260):
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-3000:]
    return json.loads((out / "summary.json").read_text())


def law(summary):
    hist = summary["staleness_hist"]
    n = sum(hist)
    return n, hist[0] / n, (hist[1] if len(hist) > 1 else 0) / n


def test_staleness_is_geometric_with_exponential_total(tmp_path):
    procs = {M: start_asgd(tmp_path / f"g{M}", M, n, cs) for M, (n, cs) in CASES.items()}
    found, bad = [], []
    for M, proc in procs.items():
        summary = finish(proc, tmp_path / f"g{M}")
        n, p0, p1 = law(summary)
        assert n == CASES[M][0] == summary["steps"]
        assert abs(summary["p_tau0"] - p0) < 1e-12
        assert abs(summary["implicit_momentum"] - (1 - p0)) < 1e-12
        q0, q1 = 1 / M, (1 / M) * (1 - 1 / M)
        line = f"M={M}: P(tau=0)={p0:.4f} (law {q0:.4f}), P(tau=1)={p1:.4f} (law {q1:.4f})"
        found.append(line)
        if abs(p0 - q0) > 0.1 * q0 or abs(p1 - q1) > 0.1 * q1:
            bad.append(line)
    print("\n".join(found))
    assert not bad, "; ".join(bad)


def test_equal_compute_times_break_the_law(tmp_path):
    # negative control: fixed delays give round robin, tau = M - 1 mostly
    M = 4
    out = tmp_path / "fixed"
    summary = finish(start_asgd(out, M, 300, 0.01, compute="fixed"), out)
    _, p0, _ = law(summary)
    assert p0 < 0.5 * (1 / M), p0
