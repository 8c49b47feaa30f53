"""Linear models z = X·W + b: ridge, binary logistic and multinomial (softmax) regression.

Their data gradient is X^T·D / B, where D holds each sample's derivative of its
data loss with respect to its linear output z. Variance-reduced methods (SAGA,
CentralVR) store D, one number (or C numbers) per sample, instead of a full
gradient per sample; `loss_and_derivs` and `grad_from_derivs` expose that
split (the capability `per_sample_derivs`):

    loss_grad(params, X, y, grad)  leaves in grad
    grad_from_derivs(X, loss_and_derivs(params, X, y)[1], g) + l2·params
"""
from __future__ import annotations

from math import prod

import numpy

from .base import Model, softmax_xent_


class LinearModel(Model):
    """z = X·W + b; subclasses give the per-sample loss and its derivative in z."""

    n_linear = None            # None: one output, W of shape (d,), scalar b
    per_sample_derivs = True

    def _build(self):
        d = prod(self.input_shape)
        k = self.n_linear
        self.layout.add("W", (d,) if k is None else (d, k))
        self.layout.add("b", () if k is None else (k,))

    def _forward(self, params, X):
        v = self.layout.views(params)
        z = X @ v["W"]
        z += v["b"]
        return z

    def _loss_derivs_(self, z, y):
        """(mean data loss, D); may overwrite z to build D."""
        raise NotImplementedError

    def loss_and_derivs(self, params, X, y):
        """(mean DATA loss as a float, D) from one forward pass, no L2 term.

        D is each sample's derivative of its data loss w.r.t. the linear
        output z, shape `derivs_shape(B)`; a new array each call (safe to store).
        """
        self._check_flat(params, "params")
        X = self._flat_input(X)
        loss, D = self._loss_derivs_(self._forward(params, X), self._targets(y))
        return float(loss), D

    def sample_derivs(self, params, X, y):
        """D of `loss_and_derivs` alone."""
        return self.loss_and_derivs(params, X, y)[1]

    def derivs_shape(self, n):
        """Shape of D for n samples: (n,) for ridge and logreg, (n, C) for softmax."""
        return (n,) if self.n_linear is None else (n, self.n_linear)

    def grad_from_derivs(self, X, D, grad, scale=1.0):
        """OVERWRITE grad with scale · mean over the batch of the data gradient implied by D.

        grad_W = scale·X^T·D / B and grad_b = scale·sum(D) / B; no L2 term, so
        loss_grad's gradient is this (scale=1) + l2·params. D may be a
        difference of stored derivatives (SAGA-style corrections).
        """
        self._check_flat(grad, "grad")
        X = self._flat_input(X)
        D = self.xp.asarray(D, dtype=self.dtype)
        v = self.layout.views(grad)
        self.xp.matmul(X.T, D, out=v["W"])
        D.sum(axis=0, out=v["b"])
        grad *= scale / X.shape[0]

    def _data_loss_grad(self, params, X, y, grad):
        X = self._flat_input(X)
        loss, D = self._loss_derivs_(self._forward(params, X), self._targets(y))
        if grad is not None:
            self.grad_from_derivs(X, D, grad)
        return loss

    def _targets(self, y):
        return self.xp.asarray(y, dtype=self.dtype).reshape(-1)


class Ridge(LinearModel):
    """Linear regression, data loss ½·(x·w + b − y)²; with l2 this is ridge regression."""

    name = "ridge"
    task = "regression"
    closed_form_optimum = True

    def _loss_derivs_(self, z, y):
        z -= y                                  # residual r; dℓ/dz = r
        return 0.5 * self.xp.mean(z * z), z

    def predict(self, params, X):
        """Predicted values, shape (B,)."""
        return self._forward(params, self._flat_input(X))

    def quadratic_terms(self, X, y):
        """(AᵀA, Aᵀy, yᵀy) in float64 for host arrays X, y, with A = [X, 1]:
        the summed data loss at flat params θ = (W, b) is
        ½(θᵀ·AᵀA·θ − 2·θᵀ·Aᵀy + yᵀy)."""
        X = numpy.asarray(X).astype(numpy.float64).reshape(X.shape[0], -1)
        A = numpy.hstack([X, numpy.ones((X.shape[0], 1))])
        y = numpy.asarray(y).astype(numpy.float64).reshape(-1)
        return A.T @ A, A.T @ y, y @ y


class LogReg(LinearModel):
    """Binary logistic regression, labels {0, 1}; n_outputs is ignored.

    ℓ(z, y) = log(1 + e^z) − y·z, evaluated as logaddexp(0, z) − y·z (no
    overflow for any z); dℓ/dz = σ(z) − y with σ(z) = exp(z − logaddexp(0, z)).
    """

    name = "logreg"
    binary = True        # one output: the run's task is binary (two classes)

    def _loss_derivs_(self, z, y):
        xp = self.xp
        softplus = xp.logaddexp(0, z)
        loss = xp.mean(softplus - y * z)
        z -= softplus
        xp.exp(z, out=z)
        z -= y
        return loss, z

    def predict(self, params, X):
        """Class ids in {0, 1}, shape (B,)."""
        return (self._forward(params, self._flat_input(X)) > 0).astype(self.xp.int64)


class Softmax(LinearModel):
    """Multinomial logistic regression over n_outputs classes, integer labels."""

    name = "softmax"

    def _build(self):
        if self.n_outputs < 2:
            raise ValueError(f"softmax needs n_outputs >= 2, got {self.n_outputs}")
        self.n_linear = self.n_outputs
        super()._build()

    def _loss_derivs_(self, z, y):
        loss = softmax_xent_(z, y, self.xp)     # z becomes softmax(z) - onehot(y)
        return loss, z

    def predict(self, params, X):
        """Class ids, shape (B,)."""
        return self._forward(params, self._flat_input(X)).argmax(axis=1)

    def _targets(self, y):
        return self._labels(y)
