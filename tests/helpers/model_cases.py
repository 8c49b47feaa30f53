"""The built-in model cases the serial model tests share: a model of each
kind with random parameters and a batch, and naive softmax references."""
import numpy as np

from mpidsgd.models import build_model

# (name, input_shape, n_outputs, architecture keywords)
CASES = {
    "ridge": ("ridge", (5,), 1, {}),
    "logreg": ("logreg", (5,), 1, {}),
    "softmax": ("softmax", (5,), 3, {}),
    "softmax-image": ("softmax", (2, 3), 4, {}),
    "mlp": ("mlp", (2, 3), 3, {"hidden": (5, 4)}),
    "mlp-nohidden": ("mlp", (4,), 3, {"hidden": ()}),
    "mlp-mse": ("mlp", (2, 3), 1, {"hidden": (5, 4), "loss": "mse"}),
    "cnn": ("cnn", (2, 7, 9), 3, {"channels": (3, 4), "kernel": 3}),
    "cnn-k2-1block": ("cnn", (1, 6, 5), 2, {"channels": (2,), "kernel": 2}),
    "cnn-k5-3blocks": ("cnn", (3, 9, 8), 3, {"channels": (2, 3, 2), "kernel": 5}),
}
LINEAR = ["ridge", "logreg", "softmax", "softmax-image"]


def make(case, l2=1e-3, dtype="float64", seed=0, batch=6):
    """Model, random params (biases nonzero), a batch X, y."""
    name, ishape, n_out, arch = CASES[case]
    model = build_model(name, input_shape=ishape, n_outputs=n_out, l2=l2, dtype=dtype, **arch)
    rng = np.random.default_rng(seed)
    params = model.zeros()
    model.init(params, rng)
    params += (0.3 * rng.standard_normal(params.size)).astype(dtype)
    X = rng.standard_normal((batch,) + ishape)
    if model.task == "regression":
        y = rng.standard_normal(batch)
    else:
        y = rng.integers(0, 2 if name == "logreg" else n_out, batch)
    return model, params, X, y


def log_softmax_ref(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def xent_ref(logits, y):
    return -log_softmax_ref(logits)[np.arange(len(y)), y].mean()
