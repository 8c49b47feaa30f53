"""Multi-layer perceptron: dense-ReLU hidden layers, then softmax cross-entropy
(classification) or, with loss = "mse", one output and half squared error
(regression)."""
from __future__ import annotations

from math import prod

from .base import Model, glorot_uniform, he_normal, softmax_xent_


class MLP(Model):
    """x -> [dense(h_i) -> ReLU]* -> dense(n_outputs) -> softmax cross-entropy.

    Layout: W0 (d, h0), b0, W1 (h0, h1), b1, ..., W{L} (h_{L-1}, C), b{L}.
    Activations live in reusable (B, h) work buffers; each layer is one GEMM.
    """

    name = "mlp"
    arch_options = ("hidden", "loss")
    LOSSES = ("cross_entropy", "mse")

    def __init__(self, input_shape, n_outputs, *, hidden=(64,), loss="cross_entropy", **kw):
        hidden = (hidden,) if isinstance(hidden, int) else tuple(int(h) for h in hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"mlp hidden sizes must be positive, got {hidden!r}")
        if loss not in self.LOSSES:
            raise ValueError(f"mlp loss must be one of {self.LOSSES}, got {loss!r}")
        self.hidden, self.loss_kind = hidden, loss
        # mse: a regression model with one output, whatever n_outputs says
        self.task = "regression" if loss == "mse" else "classification"
        super().__init__(input_shape, 1 if loss == "mse" else n_outputs, **kw)

    def _build(self):
        if self.loss_kind == "cross_entropy" and self.n_outputs < 2:
            raise ValueError(f"mlp needs n_outputs >= 2, got {self.n_outputs}")
        self.sizes = (prod(self.input_shape),) + self.hidden + (self.n_outputs,)
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            self.layout.add(f"W{i}", (fan_in, fan_out)).add(f"b{i}", (fan_out,))

    def _init_weights(self, views, rng):
        last = len(self.sizes) - 2
        for i, (fan_in, fan_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            draw = (glorot_uniform(rng, (fan_in, fan_out), fan_in, fan_out) if i == last
                    else he_normal(rng, (fan_in, fan_out), fan_in))
            self._put(views[f"W{i}"], draw)

    def _forward(self, v, X):
        """Logits (a work buffer) and the post-ReLU activations of each hidden layer."""
        xp, B = self.xp, X.shape[0]
        acts, a = [], X
        for i, n in enumerate(self.sizes[1:]):
            z = self._work(("z", i), (B, n))
            xp.matmul(a, v[f"W{i}"], out=z)
            z += v[f"b{i}"]
            if i < len(self.hidden):
                xp.maximum(z, 0, out=z)        # ReLU in place; a > 0 marks z > 0
                acts.append(z)
            a = z
        return a, acts

    def _data_loss_grad(self, params, X, y, grad):
        xp = self.xp
        X = self._flat_input(X)
        v = self.layout.views(params)
        logits, acts = self._forward(v, X)
        if self.loss_kind == "mse":
            # ½·mean (z − y)²; logits becomes dℓ/dz = z − y (scaled below)
            r = logits[:, 0] - xp.asarray(y, dtype=self.dtype).reshape(-1)
            loss = 0.5 * xp.mean(r * r)
            logits[:, 0] = r
        else:
            loss = softmax_xent_(logits, self._labels(y), xp)
        if grad is None:
            return loss

        # backward: dz holds d(mean loss)/d(pre-activation) of layer i
        g = self.layout.views(grad)
        dz = logits
        dz *= 1.0 / X.shape[0]
        for i in range(len(self.sizes) - 2, -1, -1):
            a_in = acts[i - 1] if i > 0 else X
            xp.matmul(a_in.T, dz, out=g[f"W{i}"])
            dz.sum(axis=0, out=g[f"b{i}"])
            if i > 0:
                da = self._work(("d", i), a_in.shape)
                xp.matmul(dz, v[f"W{i}"].T, out=da)
                da *= a_in > 0                 # ReLU derivative
                dz = da
        return loss

    def predict(self, params, X):
        """Class ids (cross_entropy) or predicted targets (mse), shape (B,)."""
        logits, _ = self._forward(self.layout.views(params), self._flat_input(X))
        return logits[:, 0].copy() if self.loss_kind == "mse" else logits.argmax(axis=1)
