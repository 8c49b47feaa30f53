"""Flat-buffer models with hand-written backward, picked by name.

    model = build_model("mlp", input_shape=(784,), n_outputs=10, hidden=(128,))
    params = model.zeros(); model.init(params, numpy.random.default_rng(0))
    grad = model.zeros();   loss = model.loss_grad(params, X, y, grad)
"""
from __future__ import annotations

import numpy

from .base import Model
from .cnn import CNN
from .linear import LinearModel, LogReg, Ridge, Softmax
from .mlp import MLP

MODELS = {cls.name: cls for cls in (Ridge, LogReg, Softmax, MLP, CNN)}
NAMES = tuple(MODELS) + ("torch",)    # torch: models/torch_adapter.py, imported on demand

__all__ = ["MODELS", "NAMES", "build_model", "model_class", "model_for", "Model", "LinearModel", "Ridge", "LogReg", "Softmax", "MLP", "CNN"]


def build_model(name, *, input_shape, n_outputs, hidden=(64,), channels=(8, 16), kernel=3,
                loss="cross_entropy", l2=0.0, dtype="float32", xp=numpy) -> Model:
    """Build the model registered as `name`.

    input_shape: (d,) for vectors or (C, H, W) for images (cnn needs 3-D; the
    others flatten it). n_outputs: number of classes (softmax, mlp, cnn);
    ignored by ridge and logreg. hidden: mlp hidden sizes. channels, kernel:
    cnn conv blocks and kernel size. loss: mlp output, "cross_entropy" (classes) or
    "mse" (one output, regression). l2: L2 strength in loss and gradient.
    dtype: "float32" or "float64" for params, gradients and work arrays.
    xp: array module, numpy or cupy.
    """
    try:
        cls = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}") from None
    arch = {"hidden": hidden, "channels": channels, "kernel": kernel, "loss": loss}
    opts = {k: arch[k] for k in cls.arch_options}
    return cls(input_shape, n_outputs, l2=l2, dtype=dtype, xp=xp, **opts)


def model_class(name):
    """The class registered as `name` (torch included, without importing
    PyTorch), for asking a model's capabilities before it is built; None for
    an unknown name."""
    if name == "torch":
        from .torch_adapter import TorchModel
        return TorchModel
    return MODELS.get(name)


def model_for(cfg, data, xp) -> Model:
    """The run's model from its config and data (train.build). A torch
    model's bad input (factory, loss, missing torch) raises ConfigError."""
    m = cfg.model
    if m.name == "torch":
        from .torch_adapter import TorchModel
        return TorchModel(data.input_shape, data.n_outputs, factory=m.factory, loss=m.loss,
                          path=m.path, task=data.task, seed=cfg.run.seed, l2=m.l2,
                          backward=m.backward,
                          dtype=cfg.run.dtype, xp=xp)
    return build_model(m.name, input_shape=data.input_shape, n_outputs=data.n_outputs,
                       hidden=tuple(m.hidden), channels=tuple(m.channels), kernel=m.kernel,
                       loss=m.loss, l2=m.l2, dtype=cfg.run.dtype, xp=xp)
