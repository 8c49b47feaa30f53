"""PyTorch models through the adapter (model.name = "torch"), one process:

- the CPU build of torch is the one under test (torch.version.cuda is None);
- parameters, gradients and BatchNorm statistics are views of the flat
  buffers the algorithm holds: shared memory, the same views after steps;
- a torch MLP started from the built-in mlp's initial values follows the
  built-in trajectory to 1e-10 (float64, 50 steps) under sgd and spardl.

tests/models/test_torch_mpi.py has the multi-rank tests and the bad-input cases.

Skipped without torch, unless MPIDSGD_REQUIRE_TORCH is set (CI sets it, so
a missing torch fails there instead of skipping).
"""
import os

import numpy as np
import pytest

if os.environ.get("MPIDSGD_REQUIRE_TORCH"):
    import torch
else:
    torch = pytest.importorskip("torch")

from mpidsgd.catalog import load_config, config_from_dict  # noqa: E402
from mpidsgd.topology import Topology  # noqa: E402
from mpidsgd.train import build  # noqa: E402

# the folder of torch_factories.py, the model.path of these tests
HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
STEPS = 50


def job(model, algo, **extra):
    """A small float64 job; `model` is the [model] table."""
    tables = {
        "run": {"seed": 3, "steps": STEPS, "dtype": "float64", "eval_every": 0},
        "data": {"name": "synthetic", "n_samples": 600, "n_test": 64, "n_features": 12,
                 "n_classes": 4, "batch_size": 7},
        "model": {**model, "l2": 1e-3},
        "algo": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01, **algo},
    }
    for sec, kv in extra.items():
        tables[sec].update(kv)
    return config_from_dict(tables)


def torch_model(factory):
    return {"name": "torch", "factory": f"torch_factories:{factory}", "path": HERE}


def test_torch_is_the_cpu_build():
    assert torch.version.cuda is None, torch.version.cuda


def test_parameters_gradients_and_buffers_share_the_algorithm_buffers():
    ctx = build(job(torch_model("bn_mlp"), {"name": "sgd"}), Topology())
    algo, model = ctx["algo"], ctx["model"]
    params = list(model.module.parameters())
    ptrs = [p.data_ptr() for p in params]
    algo.step(ctx["data"].train)
    grad_ptrs = [p.grad.data_ptr() for p in params]
    for _ in range(2):
        algo.step(ctx["data"].train)
    # autograd accumulated into the views it was given; it never swapped in tensors of its own
    assert [p.grad.data_ptr() for p in params] == grad_ptrs
    for p, name in zip(params, model.layout.names()):
        assert np.shares_memory(p.detach().numpy(), algo.params)
        assert np.shares_memory(p.grad.numpy(), algo.grad)
        np.testing.assert_array_equal(p.detach().numpy().reshape(-1),
                                      algo.params[model.layout.slice(name)])
    assert [p.data_ptr() for p in params] == ptrs       # the same views, not new ones
    bn = model.module[2]
    assert np.shares_memory(bn.running_mean.numpy(), model.state)
    assert np.shares_memory(bn.running_var.numpy(), model.state)
    assert int(bn.num_batches_tracked) == 3
    # a write into the algorithm's buffer is what the module computes with
    X = ctx["data"].test_X[:5]
    before = model.predict(algo.params, X).copy()
    algo.params[model.layout.slice("4.bias")] += np.array([1e6, 0, 0, 0])
    assert (model.predict(algo.params, X) == 0).all() and not (before == 0).all()


def test_the_direct_backward_gives_what_loss_backward_gives():
    """The adapter calls autograd's engine directly on the CPU (torch's
    Python wrapper is a noticeable part of a small step). It must be taken
    with the pinned torch, and give loss.backward()'s gradient bit for bit,
    overwriting `grad` (stale values in it do not leak in)."""
    ctx = build(job(torch_model("bn_mlp"), {"name": "sgd"}), Topology())
    model, params = ctx["model"], ctx["algo"].params
    assert model._backward.__name__ == "direct"
    X, y, _ = ctx["data"].train.next_batch()
    state = model.state.copy()
    got = np.full_like(params, 7.0)
    loss = model.loss_grad(params, X, y, got)
    model.state[...] = state                  # BatchNorm statistics as they were
    model._backward = lambda l: l.backward()
    want = np.full_like(params, -3.0)
    assert model.loss_grad(params, X, y, want) == loss
    np.testing.assert_array_equal(got, want)
    assert np.abs(got).max() > 0


@pytest.mark.parametrize("backward", ["auto", "autograd"])
@pytest.mark.parametrize("algo", [{"name": "sgd"}, {"name": "spardl", "density": 0.05}])
def test_torch_mlp_follows_the_builtin_mlp_trajectory(algo, backward):
    """Both training paths: without autograd (the twin is a Sequential of
    Linear and ReLU) and through it."""
    from torch_factories import HIDDEN, SEED, to_torch_order
    ref = build(job({"name": "mlp", "hidden": list(HIDDEN)}, algo), Topology())
    tor = build(job({**torch_model("builtin_twin"), "backward": backward}, algo), Topology())
    assert (tor["model"]._direct is not None) == (backward == "auto")
    assert ref["algo"].cfg.run.seed == SEED
    perm = to_torch_order((12,), 4)
    a, b = ref["algo"], tor["algo"]
    np.testing.assert_array_equal(b.params, a.params[perm])
    worst = 0.0
    for t in range(STEPS):
        la = a.step(ref["data"].train).loss
        lb = b.step(tor["data"].train).loss
        assert abs(la - lb) <= 1e-10, (t, la, lb)
        worst = max(worst, float(np.abs(b.params - a.params[perm]).max()))
        assert worst <= 1e-10, (t, worst)
    # the run moved the parameters far beyond the tolerance
    assert np.abs(b.params - b.model._home).max() > 1e-2


def test_the_example_job_trains_its_cnn(tmp_path):
    from mpidsgd.bench.torch_ddp import write_images
    root = os.path.dirname(os.path.dirname(HERE))
    write_images(str(tmp_path / "img"), n_train=256, n_test=64)
    cfg = load_config(os.path.join(root, "jobs", "torch_cnn.toml"), [
        f'data.path="{tmp_path}/img-train.npz"', f'data.test_path="{tmp_path}/img-test.npz"',
        f'model.path="{root}/examples"', "run.steps=4", f'run.out_dir="{tmp_path}/out"'])
    ctx = build(cfg, Topology())
    algo, model = ctx["algo"], ctx["model"]
    assert model.input_shape == (1, 28, 28) and model.state is not None
    before = model.state.copy()
    while not algo.done():
        assert np.isfinite(algo.step(ctx["data"].train).loss)
    assert not np.array_equal(model.state, before)      # BatchNorm statistics moved


def test_the_core_never_imports_torch_for_builtin_models():
    import subprocess
    import sys
    code = ("import sys\nfrom mpidsgd import bench\nfrom mpidsgd.catalog import config_from_dict\n"
            "from mpidsgd.train import build\n"
            "from mpidsgd.topology import Topology\n"
            "ctx = build(config_from_dict({'run': {'steps': 2}, 'data': {'n_samples': 256, 'n_test': 32}}),"
            " Topology())\nctx['algo'].step(ctx['data'].train)\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
