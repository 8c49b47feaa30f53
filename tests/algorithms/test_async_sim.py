"""The asynchrony-as-momentum theorem, checked on the serial event simulation
of tests/refs/async_sim.py (a server and M workers with exponential compute
times on a quadratic), and the negative controls that show the checks can fail.
"""
import numpy as np
import pytest

from refs.async_sim import fit_momentum, simulate, staleness_law

# a 3-d quadratic with distinct curvatures; small steps keep the run long
A = np.diag([1.0, 0.5, 0.2])
W0 = np.ones(3)
ALPHA = 0.02
STEPS, SEEDS = 300, 2500


def _run(M, law="exponential", **kw):
    return simulate(A, W0, M=M, steps=STEPS, seeds=SEEDS, alpha=ALPHA, law=law,
                    seed=100 + M, **kw)


@pytest.mark.parametrize("M", [2, 4, 8])
def test_exponential_workers_act_as_momentum(M):
    # regression of E[dw_{t+1}] on E[dw_t] and E grad f: mu ~ 1 - 1/M and
    # the effective step (1 - mu) alpha = alpha / M
    r = _run(M)
    mu, c = fit_momentum(A, r.w, burn_in=4 * M)
    assert abs(mu - (1 - 1 / M)) < 0.05, mu
    assert abs(c - ALPHA / M) < 0.2 * ALPHA / M, c
    # staleness is Geometric(1/M): P(tau=0) = 1/M, P(tau=1) = (1/M)(1 - 1/M)
    p = staleness_law(r.tau, burn_in=4 * M)
    assert abs(p[0] - 1 / M) < 0.05 / M, p
    assert abs(p[1] - (1 / M) * (1 - 1 / M)) < 0.05 / M, p


@pytest.mark.parametrize("M", [4, 8])
def test_synchronous_server_has_no_implicit_momentum(M):
    # negative control: a server that only applies fresh gradients gives mu ~ 0,
    # so the check above would fail for a simulation without asynchrony
    r = _run(M, law="sync")
    mu, c = fit_momentum(A, r.w, burn_in=4 * M)
    assert abs(mu) < 1e-6 and abs(c - ALPHA) < 1e-6
    assert staleness_law(r.tau)[0] == 1.0


def test_equal_compute_times_are_not_geometric():
    # deterministic compute: round robin, tau = M - 1 every time
    M = 4
    r = _run(M, law="fixed")
    p = staleness_law(r.tau, burn_in=4 * M, kmax=M)
    assert p[0] < 0.01 and p[M - 1] > 0.9, p


def test_fixed_part_breaks_the_law():
    # a fixed part of a tenth of the exponential mean on top of it (what
    # "exponential" emulation does with real compute time) already moves
    # P(tau=0) at M = 4 from 0.25 to about 0.19
    M = 4
    r = simulate(A, W0, M=M, steps=1500, seeds=1000, alpha=0.0, law="shifted",
                 fixed=0.1 / 1.1, seed=7)
    p0 = staleness_law(r.tau, burn_in=10 * M)[0]
    assert 0.17 < p0 < 0.21, p0
