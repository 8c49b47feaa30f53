"""Compute emulation: exponential_total makes each gradient's WHOLE time an
Exp(compute_s) draw (real compute included), with injected sleep and warn
recorders so the checks are exact and need no clock."""
import numpy as np
import pytest

from mpidsgd import config as C

from mpidsgd.catalog import load_config
from mpidsgd.algorithms.base import ComputeEmulation


def _emu(kind, mean=0.1, rank=3, seed=5, slow=(), slowdown=1.0):
    cfg = load_config(None, ["run.steps=5", f"comm.emulate.compute='{kind}'",
                        f"comm.emulate.compute_s={mean}",
                        f"comm.emulate.slow_ranks={list(slow)}",
                        f"comm.emulate.slowdown={slowdown}"]).comm.emulate
    slept, warned = [], []
    emu = ComputeEmulation(cfg, rank, seed, sleep=slept.append, warn=warned.append)
    return emu, slept, warned


def _draws(n, mean, rank=3, seed=5):
    # the same stream ComputeEmulation uses for this rank and seed
    return np.random.default_rng([seed, rank, 0xC0]).exponential(mean, n)


def test_total_time_is_the_draw_real_compute_included():
    emu, slept, warned = _emu("exponential_total", mean=0.1)
    measured = 0.002                    # a fiftieth of the mean: no warning
    for _ in range(50):
        emu.delay(measured)
    draws = _draws(50, 0.1)
    # sleep until start + draw; a draw shorter than the real compute sleeps 0
    expect = draws[draws > measured] - measured
    np.testing.assert_allclose(slept, expect, rtol=0, atol=1e-15)
    assert len(slept) == np.sum(draws > measured) < 50     # some draws are short
    assert warned == []


def test_exponential_adds_the_draw_on_top():
    # the other mode: the delay is the draw itself, whatever the real compute
    emu, slept, _ = _emu("exponential", mean=0.1)
    for _ in range(20):
        emu.delay(0.002)
    np.testing.assert_allclose(slept, _draws(20, 0.1), rtol=0, atol=1e-15)


def test_slow_rank_scales_the_total():
    emu, slept, _ = _emu("exponential_total", mean=0.1, slow=[3], slowdown=3.0)
    for _ in range(20):
        emu.delay(0.001)
    draws = 3.0 * _draws(20, 0.1)
    np.testing.assert_allclose(slept, draws[draws > 0.001] - 0.001, rtol=0, atol=1e-15)


def test_warns_once_when_real_compute_exceeds_a_twentieth():
    emu, _, warned = _emu("exponential_total", mean=0.1)
    emu.delay(0.5)                      # the first call is never warned
    emu.delay(0.0049)                   # under 0.1 / 20: quiet
    assert warned == []
    for _ in range(5):
        emu.delay(0.0051)               # over: one warning, however often
    assert len(warned) == 1
    assert warned[0].startswith("mpidsgd: warning: rank 3: real step time 0.0051 s") and "compute_s" in warned[0]


def test_total_needs_a_positive_mean():
    with pytest.raises(C.ConfigError, match="comm.emulate.compute_s"):
        load_config(None, ["run.steps=5", "comm.emulate.compute='exponential_total'"])
    with pytest.raises(C.ConfigError, match="comm.emulate.compute"):
        load_config(None, ["run.steps=5", "comm.emulate.compute='gamma'"])


class Clock:
    def __init__(self, t=0.0):
        self.t = t

    def __call__(self):
        return self.t


def test_chained_gradient_runs_from_when_the_last_was_due():
    # asgd with one rank per group: the cycle push -> reply -> gradient is one
    # draw, so the round trip and a late wake-up are inside the next draw
    cfg = load_config(None, ["run.steps=5", "comm.emulate.compute='exponential_total'",
                        "comm.emulate.compute_s=0.1"]).comm.emulate
    slept, clock = [], Clock()
    emu = ComputeEmulation(cfg, 3, 5, sleep=slept.append, warn=lambda _: None, clock=clock)
    d1, d2, d3 = _draws(3, 0.1)
    # gradient 1 computes from 10.000 to 10.001: due at 10 + d1
    clock.t = 10.001
    real, start = emu.begun(10.0)
    emu.delay(clock.t - real, clock.t - start)
    # it wakes 0.5 ms late and pushes; the reply comes, gradient 2 computes
    # from +3 ms to +4 ms: it sleeps d2 minus all of that
    emu.chain(10.0 + d1 + 0.0005)
    clock.t = 10.0 + d1 + 0.004
    real, start = emu.begun(10.0 + d1 + 0.003)
    assert start == pytest.approx(10.0 + d1) and real == pytest.approx(10.0 + d1 + 0.0005)
    emu.delay(clock.t - real, clock.t - start)
    # gradient 3 is not chained: it runs from its own start again
    clock.t = 20.002
    real, start = emu.begun(20.0)
    emu.delay(clock.t - real, clock.t - start)
    np.testing.assert_allclose(slept, [d1 - 0.001, d2 - 0.004, d3 - 0.002], rtol=0, atol=1e-12)
    assert emu.due == pytest.approx(20.0 + d3)


def test_only_exponential_total_chains():
    emu, _, _ = _emu("exponential", mean=0.1)
    emu.delay(0.001)
    emu.chain(5.0)
    assert emu.begun(7.0) == (7.0, 7.0)


def test_a_long_stall_carries_at_most_one_mean():
    cfg = load_config(None, ["run.steps=5", "comm.emulate.compute='exponential_total'",
                        "comm.emulate.compute_s=0.1"]).comm.emulate
    slept, clock = [], Clock()
    emu = ComputeEmulation(cfg, 3, 0, sleep=slept.append, warn=lambda _: None, clock=clock)
    d1, d2 = _draws(2, 0.1, seed=0)
    assert d2 > 0.102                   # seed 0: the second draw is 0.157 s
    # the first gradient stalls 5 s (compilation): it is due 0.1 s before its end
    clock.t = 5.0
    emu.delay(5.0, 5.0)
    assert emu.due == pytest.approx(4.9) and slept == []
    # the next, chained, runs from there: it sleeps d2 less the 0.1 s and
    # its own 2 ms, not d2 less 5 s (which would leave it unslept)
    emu.chain(5.0)
    clock.t = 5.002
    real, start = emu.begun(5.001)
    emu.delay(clock.t - real, clock.t - start)
    np.testing.assert_allclose(slept, [d2 - 0.102], rtol=0, atol=1e-12)
    assert emu.due == pytest.approx(4.9 + d2)
