"""The adapter's direct path (mpidsgd/models/torch_direct.py): a Sequential of
known layers trains without autograd.

- it gives autograd's loss and gradient (float64, to rounding) for stacks of
  every listed layer, both losses, a Linear on 3-d input, no-bias layers;
- it overwrites every gradient entry (stale values in the buffer do not leak);
- anything outside the table goes through autograd, with the reason;
- the algorithm's buffers are the module's parameters (shared memory).

Skipped without torch, unless MPIDSGD_REQUIRE_TORCH is set.
"""
import os

import numpy as np
import pytest

if os.environ.get("MPIDSGD_REQUIRE_TORCH"):
    import torch
else:
    torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from mpidsgd.models.torch_adapter import TorchModel  # noqa: E402
from mpidsgd.topology import Topology  # noqa: E402
from mpidsgd.train import build  # noqa: E402

import torch_factories  # noqa: E402

HERE = os.path.dirname(torch_factories.__file__)


def stacks():
    """(name, input shape, builder(n_outputs)) covering every listed layer."""
    return [
        ("linear-relu", (6,), lambda c: nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, c))),
        ("tanh-sigmoid-nobias", (6,), lambda c: nn.Sequential(
            nn.Linear(6, 7, bias=False), nn.Tanh(), nn.Linear(7, 5), nn.Sigmoid(),
            nn.Linear(5, c, bias=False))),
        ("nested-flatten-identity", (2, 3, 4), lambda c: nn.Sequential(
            nn.Flatten(), nn.Sequential(nn.Linear(24, 8), nn.ReLU(inplace=True), nn.Identity()),
            nn.Linear(8, c))),
        ("linear-on-3d", (3, 4), lambda c: nn.Sequential(
            nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, c))),
    ]


def model_for(build_fn, shape, loss, backward):
    n_out = 1 if loss == "mse" else 4
    torch_factories.CURRENT["build"] = lambda: build_fn(n_out).double()
    return TorchModel(shape, n_out, factory="torch_factories:current", loss=loss,
                      backward=backward, dtype="float64", seed=5)


def batch(shape, loss, rng, n=11):
    X = rng.standard_normal((n,) + shape)
    y = rng.standard_normal(n) if loss == "mse" else rng.integers(0, 4, n)
    return X, y


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("name,shape,build_fn", stacks(), ids=[s[0] for s in stacks()])
def test_direct_path_gives_autograds_loss_and_gradient(name, shape, build_fn, loss):
    rng = np.random.default_rng(1)
    direct = model_for(build_fn, shape, loss, "auto")
    auto = model_for(build_fn, shape, loss, "autograd")
    assert direct._direct is not None, direct.direct_reason
    assert auto._direct is None
    params = direct.zeros()
    direct.init(params)
    params += 0.3 * rng.standard_normal(params.size)     # away from the factory's values
    X, y = batch(shape, loss, rng)
    got, want = np.full_like(params, 7.0), np.full_like(params, -3.0)
    l_got = direct.loss_grad(params, X, y, got)
    l_want = auto.loss_grad(params, X, y, want)
    assert abs(l_got - l_want) <= 1e-13 * max(1.0, abs(l_want))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert np.abs(got - want).max() < 1e-12 < np.abs(want).max()


def test_a_label_out_of_range_is_refused_as_under_autograd():
    name, shape, build_fn = stacks()[0]
    direct = model_for(build_fn, shape, "cross_entropy", "auto")
    params = direct.zeros()
    direct.init(params)
    X, y = batch(shape, "cross_entropy", np.random.default_rng(0))
    y[3] = 4
    with pytest.raises(IndexError):
        direct.loss_grad(params, X, y, direct.zeros())


class MyLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2.0


def refused():
    """(name, builder, words of the reason) the direct path must not take."""
    shared = nn.Linear(6, 6)

    def hooked(c):
        m = nn.Sequential(nn.Linear(6, c))
        m[0].register_forward_hook(lambda mod, inp, out: out * 2)
        return m

    def frozen(c):
        m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, c))
        m[0].bias.requires_grad_(False)
        return m

    return [
        ("batchnorm", lambda c: nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, c)),
         "BatchNorm1d is not one the direct path knows"),
        ("dropout", lambda c: nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.Linear(5, c)),
         "Dropout is not one"),
        ("subclass", lambda c: nn.Sequential(MyLinear(6, 5), nn.ReLU(), nn.Linear(5, c)),
         "MyLinear is not one"),
        ("not-sequential", lambda c: nn.ModuleList([nn.Linear(6, c)]), "ModuleList is not one"),
        ("hook", hooked, "Linear has hooks"),
        ("shared", lambda c: nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(6, c)),
         "used by two layers"),
        ("frozen", frozen, "frozen"),
    ]


@pytest.mark.parametrize("name,build_fn,words", refused(), ids=[r[0] for r in refused()])
def test_modules_outside_the_table_go_through_autograd(name, build_fn, words):
    model = model_for(build_fn, (6,), "cross_entropy", "auto")
    assert model._direct is None and words in model.direct_reason, model.direct_reason


def test_the_algorithms_buffers_are_the_modules_tensors_on_the_direct_path():
    tables = {"run": {"seed": 3, "steps": 5, "dtype": "float64", "eval_every": 0},
              "data": {"name": "synthetic", "n_samples": 200, "n_test": 32, "n_features": 12,
                       "n_classes": 4, "batch_size": 7},
              "model": {"name": "torch", "factory": "torch_factories:builtin_twin", "path": HERE},
              "algo": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    from mpidsgd.catalog import config_from_dict
    ctx = build(config_from_dict(tables), Topology())
    algo, model = ctx["algo"], ctx["model"]
    assert model._direct is not None, model.direct_reason
    before = algo.params.copy()
    for _ in range(3):
        algo.step(ctx["data"].train)
    assert np.abs(algo.params - before).max() > 1e-3          # it trained
    for p, name in zip(model.module.parameters(), model.layout.names()):
        assert np.shares_memory(p.detach().numpy(), algo.params)
        np.testing.assert_array_equal(p.detach().numpy().reshape(-1),
                                      algo.params[model.layout.slice(name)])
    for v in model._views(model._gviews, algo.grad):          # where gradients were written
        assert np.shares_memory(v.numpy(), algo.grad)


@pytest.mark.parametrize("factory,backward,line", [
    ("builtin_twin", "auto", "training steps run without autograd (the direct path)"),
    ("builtin_twin", "autograd", "through autograd (model.backward = 'autograd')"),
    ("bn_mlp", "auto", "through autograd (layer BatchNorm1d is not one the direct path knows)"),
])
def test_the_run_says_which_path_its_steps_take(tmp_path, capsys, factory, backward, line):
    from mpidsgd import train
    items = {"run.steps": 2, "run.eval_every": 0, "run.progress": "false",
             "data.n_samples": 64, "data.n_test": 16, "data.n_features": 12, "data.n_classes": 4,
             "model.name": '"torch"', "model.factory": f'"torch_factories:{factory}"',
             "model.path": f'"{HERE}"', "model.backward": f'"{backward}"',
             "run.out_dir": f'"{tmp_path}"'}
    args = train.parse_args([x for k, v in items.items() for x in ("--set", f"{k}={v}")])
    topo = Topology()
    cfg, ctx = train.setup(args, topo)
    train.run(cfg, ctx, topo, args)
    out = [s for s in capsys.readouterr().out.splitlines() if "torch model:" in s]
    assert out == [f"mpidsgd: torch model: {line}" if "without" in line
                   else f"mpidsgd: torch model: training steps run {line}"]


def test_buffers_handed_in_turn_each_get_their_own_gradient():
    """The tensor-view cache (by array object, then by address) never hands
    one buffer's views to another: alternate two parameter vectors, a second
    array object over the first one's memory, and more buffers than the
    cache holds."""
    name, shape, build_fn = stacks()[0]
    model = model_for(build_fn, shape, "cross_entropy", "auto")
    fresh = model_for(build_fn, shape, "cross_entropy", "auto")
    rng = np.random.default_rng(4)
    X, y = batch(shape, "cross_entropy", rng)
    vecs = [model.zeros() + rng.standard_normal(model.layout.size) for _ in range(20)]
    order = [0, 1, 0, 1] + list(range(20)) + [0, 1]
    for i in order:
        p = vecs[i] if i != 1 else vecs[1][:]            # a new array object each time
        g, want = model.zeros(), fresh.zeros()
        assert model.loss_grad(p, X, y, g) == fresh.loss_grad(vecs[i].copy(), X, y, want)
        np.testing.assert_array_equal(g, want)
