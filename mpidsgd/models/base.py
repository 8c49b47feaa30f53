"""Model base class: flat parameters, L2 in the loss, shared numerics.

A model owns no parameters. It describes them with a FlatLayout and computes
loss and gradient for any flat buffer it is handed, so that every algorithm can
keep, average, sparsify and checkpoint one 1-D array per copy of the model.
All arithmetic goes through the array module `xp` (numpy or cupy).
"""
from __future__ import annotations

from math import prod

import numpy

from ..flat import FlatLayout

DTYPES = ("float32", "float64")


class Model:
    """Base class; subclasses fill `layout` in `_build` and write `_data_loss_grad`.

    Attributes: `name` (registry name), `layout` (FlatLayout of the parameters),
    `task` ("classification" | "regression"), `dtype` (numpy dtype of params,
    gradients and all work arrays), `xp` (array module), `l2` (L2 strength),
    `input_shape`, `n_outputs`.

    Capabilities (class attributes) that algorithms ask for instead of names:
    `per_sample_derivs` (the model gives each sample's derivative of its data
    loss w.r.t. a linear output: `loss_and_derivs`, `grad_from_derivs`,
    `derivs_shape`), `stored_gradients` (a batch's data gradient depends on
    the parameters and the batch only, so a stored one can be replayed later)
    and `closed_form_optimum` (the data loss is a quadratic form whose terms
    `quadratic_terms` gives, so the exact optimum can be solved for).

    The loss is  mean over the batch of the data loss + (l2/2)·||params||²
    (every parameter, biases included), and its gradient is the mean data
    gradient + l2·params.

    A model keeps reusable work buffers between calls, so one instance must not
    be used from two threads at once.
    """

    name = "base"
    task = "classification"
    arch_options = ()          # extra build_model keywords this model takes
    state = None               # flat array of non-parameter state (torch BatchNorm statistics)
    per_sample_derivs = False  # loss_and_derivs / grad_from_derivs / derivs_shape exist
    stored_gradients = True    # a data gradient is a pure function of (params, batch)
    closed_form_optimum = False  # quadratic_terms exists

    def __init__(self, input_shape, n_outputs, *, l2=0.0, dtype="float32", xp=numpy):
        self.input_shape = _check_shape(input_shape)
        self.n_outputs = int(n_outputs)
        if not l2 >= 0.0:
            raise ValueError(f"l2 must be >= 0, got {l2!r}")
        self.l2 = float(l2)
        if numpy.dtype(dtype).name not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.dtype = numpy.dtype(dtype)
        self.xp = xp
        self.layout = FlatLayout()
        self._work_bufs = {}
        self._build()

    # -- to be provided by subclasses ------------------------------------

    def _build(self):
        raise NotImplementedError

    def _data_loss_grad(self, params, X, y, grad):
        """Mean data loss (device scalar); writes the mean data gradient if grad is not None."""
        raise NotImplementedError

    def _init_weights(self, views, rng):
        """Fill weight views from host draws; biases stay zero."""

    def predict(self, params, X):
        raise NotImplementedError

    # -- public interface --------------------------------------------------

    def zeros(self):
        """A new zero flat buffer of this model's size and dtype."""
        return self.xp.zeros(self.layout.size, dtype=self.dtype)

    def init(self, params, rng):
        """Fill `params` in place: He/Glorot weights drawn from `rng` (numpy Generator), zero biases."""
        self._check_flat(params, "params")
        params.fill(0)
        self._init_weights(self.layout.views(params), rng)

    def loss_grad(self, params, X, y, grad) -> float:
        """Mean loss + (l2/2)·||params||²; OVERWRITES `grad` with its gradient."""
        self._check_flat(params, "params")
        self._check_flat(grad, "grad")
        loss = self._data_loss_grad(params, X, y, grad)
        if self.l2:
            grad += self.l2 * params
            loss = loss + self._l2_term(params)
        return float(loss)

    def loss(self, params, X, y) -> float:
        """Same value as loss_grad, without the gradient."""
        self._check_flat(params, "params")
        loss = self._data_loss_grad(params, X, y, None)
        if self.l2:
            loss = loss + self._l2_term(params)
        return float(loss)

    def state_dict(self) -> dict:
        """Per-rank non-parameter state for checkpoints (built-in models: none)."""
        return {}

    def load_state_dict(self, d: dict):
        """Restore what state_dict gave."""

    # -- helpers -------------------------------------------------------------

    def _l2_term(self, params):
        return 0.5 * self.l2 * self.xp.dot(params, params)

    def _check_flat(self, buf, what):
        if buf.ndim != 1 or buf.shape[0] != self.layout.size or buf.dtype != self.dtype:
            raise ValueError(f"{what} must be a flat {self.dtype} array of size {self.layout.size}, "
                             f"got shape {buf.shape} {buf.dtype}")

    def _flat_input(self, X):
        """X as a (B, d) array of the model dtype (copies only to convert)."""
        X = self.xp.asarray(X, dtype=self.dtype)
        d = prod(self.input_shape)
        if X.ndim < 1 or prod(X.shape[1:]) != d:
            raise ValueError(f"{self.name}: expected inputs of shape (B, {self.input_shape}) "
                             f"or (B, {d}), got {X.shape}")
        return X.reshape(X.shape[0], d)

    def _labels(self, y):
        """Integer class ids, shape (B,); float-coded labels are cast."""
        y = self.xp.asarray(y).reshape(-1)
        return y if y.dtype.kind in "iu" else y.astype(self.xp.int64)

    def _work(self, key, shape):
        """A reusable work buffer; a newly made one is zero (zero borders stay zero if never written)."""
        buf = self._work_bufs.get(key)
        if buf is None or buf.shape != shape:
            buf = self.xp.zeros(shape, dtype=self.dtype)
            self._work_bufs[key] = buf
        return buf

    def _put(self, view, host):
        """Copy a host float64 draw into a (possibly device) parameter view."""
        view[...] = self.xp.asarray(host.astype(self.dtype))

    def __repr__(self):
        return (f"{type(self).__name__}(input_shape={self.input_shape}, n_outputs={self.n_outputs}, "
                f"params={self.layout.size}, l2={self.l2}, dtype={self.dtype.name})")


def _check_shape(shape):
    shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {shape!r}")
    return shape


def he_normal(rng, shape, fan_in):
    """N(0, 2/fan_in): keeps activation variance through ReLU layers."""
    return rng.normal(0.0, (2.0 / fan_in) ** 0.5, size=shape)


def glorot_uniform(rng, shape, fan_in, fan_out):
    """U(±sqrt(6/(fan_in+fan_out))): for the linear output layer."""
    lim = (6.0 / (fan_in + fan_out)) ** 0.5
    return rng.uniform(-lim, lim, size=shape)


def softmax_xent_(z, y, xp):
    """In place: logits z (B, C) -> softmax(z) - onehot(y); returns the mean cross-entropy.

    Stable: logits are shifted by their row max, so exp never overflows and
    the loss is log(sum exp(z - m)) - (z_y - m) with the sum in [1, C].
    """
    rows = xp.arange(z.shape[0])
    z -= z.max(axis=1, keepdims=True)
    picked = z[rows, y]
    xp.exp(z, out=z)
    s = z.sum(axis=1, keepdims=True)
    loss = xp.mean(xp.log(s.reshape(-1)) - picked)
    z /= s
    z[rows, y] -= 1
    return loss
