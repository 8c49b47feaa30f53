"""PyTorch factories for the torch-model tests (imported only where torch is).

`builtin_twin` builds nn.Linear layers holding exactly the initial values of
the built-in `mlp` of the same run (seed SEED, hidden HIDDEN), transposed to
PyTorch's (out, in) storage; `to_torch_order` maps a built-in flat vector to
the torch model's flat order, so the two trajectories can be compared.
"""
import numpy as np
import torch
from torch import nn

from mpidsgd.models import build_model

SEED, HIDDEN = 3, (9,)


def builtin_mlp(input_shape, n_outputs):
    return build_model("mlp", input_shape=input_shape, n_outputs=n_outputs, hidden=HIDDEN,
                       dtype="float64")


def builtin_twin(input_shape, n_outputs):
    """An MLP with the built-in mlp's initial parameters (train.build's stream)."""
    ref = builtin_mlp(input_shape, n_outputs)
    p = ref.zeros()
    ref.init(p, np.random.default_rng([SEED, 0x1D]))
    v = ref.layout.views(p)
    layers = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(ref.sizes[:-1], ref.sizes[1:])):
        lin = nn.Linear(a, b, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(v[f"W{i}"].T)))
            lin.bias.copy_(torch.from_numpy(v[f"b{i}"]))
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def to_torch_order(input_shape, n_outputs):
    """perm with torch_flat == builtin_flat[perm]."""
    ref = builtin_mlp(input_shape, n_outputs)
    v = ref.layout.views(np.arange(ref.layout.size))
    parts = []
    for i in range(len(ref.sizes) - 1):
        parts += [v[f"W{i}"].T.reshape(-1), v[f"b{i}"]]
    return np.concatenate(parts)


def bn_mlp(input_shape, n_outputs):
    """A small MLP with BatchNorm: running statistics are non-parameter state."""
    d = int(np.prod(input_shape))
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, n_outputs))


CURRENT = {}      # "build": a no-argument builder a test puts here


def current(input_shape, n_outputs):
    """Whatever module the calling test put in CURRENT."""
    return CURRENT["build"]()


def raises(input_shape, n_outputs):
    raise RuntimeError("factory failed on purpose")


def no_params(input_shape, n_outputs):
    return nn.Sequential(nn.Flatten(), nn.ReLU())
