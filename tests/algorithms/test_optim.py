"""Local optimizers and schedules against hand-written formulas."""
import math

import numpy as np
import pytest

from mpidsgd.optim import SGD, AdamW, schedule


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_weight_decay_matches_formula(nesterov):
    rng = np.random.default_rng(0)
    x = rng.normal(size=7)
    ref_x, v = x.copy(), np.zeros(7)
    opt = SGD(7, np.float64, np, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
    for _ in range(5):
        g = rng.normal(size=7)
        d = g + 0.01 * ref_x
        v = 0.9 * v + d
        ref_x = ref_x - 0.1 * (d + 0.9 * v if nesterov else v)
        opt.step(x, g, 0.1)
    np.testing.assert_allclose(x, ref_x, rtol=0, atol=1e-14)


def test_adamw_matches_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=5)
    ref, m, v = x.copy(), np.zeros(5), np.zeros(5)
    opt = AdamW(5, np.float64, np, weight_decay=0.1)
    for t in range(1, 6):
        g = rng.normal(size=5)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        ref = ref * (1 - 0.01 * 0.1)
        ref = ref - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        opt.step(x, g, 0.01)
    np.testing.assert_allclose(x, ref, rtol=1e-12)


def test_schedules():
    assert schedule("constant", 0.5, total_steps=10)(7) == 0.5
    w = schedule("warmup", 1.0, total_steps=10, warmup=4)
    assert [w(t) for t in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    c = schedule("cosine", 1.0, total_steps=12, warmup=2, min_lr=0.1)
    assert c(0) == 0.5 and c(2) == 1.0 and math.isclose(c(12), 0.1)
    assert math.isclose(c(7), 0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    s = schedule("step", 1.0, total_steps=10, step_every=3, gamma=0.5)
    assert [s(t) for t in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]


OPTIMIZERS = pytest.mark.parametrize("make", [lambda: SGD(4, np.float64, np, momentum=0.9),
                                              lambda: AdamW(4, np.float64, np)], ids=["sgd", "adamw"])


def stepped(make):
    """An optimizer after 3 steps, its rng and its parameters: (opt, rng, x)."""
    rng = np.random.default_rng(2)
    a, x = make(), rng.normal(size=4)
    for _ in range(3):
        a.step(x, rng.normal(size=4), 0.1)
    return a, rng, x


@OPTIMIZERS
def test_state_dict_holds_only_its_own_names(make):
    # the owner nests it ({"inner": st}): no prefixes
    a, _, _ = stepped(make)
    st = a.state_dict()
    assert st and set(st) <= {"momentum_buf", "adam_m", "adam_v", "adam_t"}


@OPTIMIZERS
def test_restored_state_continues_the_trajectory(make):
    a, rng, x = stepped(make)
    b = make()
    b.load_state_dict({k: np.copy(v) for k, v in a.state_dict().items()})
    xa, xb, g = x.copy(), x.copy(), rng.normal(size=4)
    a.step(xa, g, 0.1)
    b.step(xb, g, 0.1)
    np.testing.assert_array_equal(xa, xb)
