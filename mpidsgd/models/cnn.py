"""Small CNN: [conv(k, 'same') -> ReLU -> 2x2 max-pool] per entry of `channels`, then dense.

Activations are kept channel-major, (C, B, H, W), so that each convolution is
ONE matrix product over the whole batch:

    out (C_out, B·H·W) = W (C_out, C_in·k·k) @ cols (C_in·k·k, B·H·W)

im2col copies k·k shifted windows of the zero-padded input (a Python loop over
kernel offsets, never over samples); col2im adds them back. Both are plain
slicing, valid for numpy and cupy alike, with no scatter-add.

Pooling is applied before the ReLU: max and ReLU commute (ReLU is monotone),
so the result equals ReLU-then-pool while the ReLU touches a quarter of the
data. The gradient goes to the first maximum of each window and only where
the pooled value is positive. Odd sizes are floored: the last row/column of
an odd map gets no output and zero gradient.
"""
from __future__ import annotations

from .base import Model, glorot_uniform, he_normal, softmax_xent_

_WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))   # offsets inside a 2x2 pooling window


def _window(a, di, dj):
    """Strided view of offset (di, dj) of every 2x2 window of a (C, B, H, W) map, floored."""
    h2, w2 = a.shape[2] // 2, a.shape[3] // 2
    return a[:, :, di:2 * h2:2, dj:2 * w2:2]


class CNN(Model):
    """Conv blocks of `channels` output channels, kernel `kernel`, then dense to n_outputs.

    Layout: conv{i}.W (C_out, C_in, k, k), conv{i}.b (C_out,), ..., fc.W
    (C·H'·W', n_outputs), fc.b; the dense layer reads features in (c, h, w) order.
    """

    name = "cnn"
    arch_options = ("channels", "kernel")

    def __init__(self, input_shape, n_outputs, *, channels=(8, 16), kernel=3, **kw):
        channels = (channels,) if isinstance(channels, int) else tuple(int(c) for c in channels)
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"cnn channels must be a non-empty tuple of positive ints, got {channels!r}")
        if int(kernel) < 1:
            raise ValueError(f"cnn kernel must be >= 1, got {kernel!r}")
        self.channels, self.kernel = channels, int(kernel)
        super().__init__(input_shape, n_outputs, **kw)

    def _build(self):
        if len(self.input_shape) != 3:
            raise ValueError(f"cnn needs input_shape (C, H, W), got {self.input_shape}")
        if self.n_outputs < 2:
            raise ValueError(f"cnn needs n_outputs >= 2, got {self.n_outputs}")
        c, h, w = self.input_shape
        k = self.kernel
        self.blocks = []                         # (C_in, C_out, H, W) at each conv
        for i, c_out in enumerate(self.channels):
            self.layout.add(f"conv{i}.W", (c_out, c, k, k)).add(f"conv{i}.b", (c_out,))
            self.blocks.append((c, c_out, h, w))
            c, h, w = c_out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"cnn: input {self.input_shape} is too small for "
                             f"{len(self.channels)} 2x2 poolings")
        self.n_features = c * h * w
        self.layout.add("fc.W", (self.n_features, self.n_outputs)).add("fc.b", (self.n_outputs,))
        self.pad = (k - 1) // 2                  # 'same': extra (k-1)-pad on the high side

    def _init_weights(self, views, rng):
        k = self.kernel
        for i, (c_in, c_out, _, _) in enumerate(self.blocks):
            self._put(views[f"conv{i}.W"], he_normal(rng, (c_out, c_in, k, k), c_in * k * k))
        n, C = self.n_features, self.n_outputs
        self._put(views["fc.W"], glorot_uniform(rng, (n, C), n, C))

    # -- forward ---------------------------------------------------------------

    def _images(self, X):
        X = self.xp.asarray(X, dtype=self.dtype)
        if X.ndim < 1 or X.shape[1:] not in (self.input_shape, (self.n_inputs,)):
            raise ValueError(f"cnn: expected inputs of shape (B, {self.input_shape}) "
                             f"or (B, {self.n_inputs}), got {X.shape}")
        return X.reshape((X.shape[0],) + self.input_shape)

    @property
    def n_inputs(self):
        c, h, w = self.input_shape
        return c * h * w

    def _forward(self, v, X, keep=False):
        """Logits (B, C), features and, with keep, per block what the backward needs."""
        xp, k, p, B = self.xp, self.kernel, self.pad, X.shape[0]
        x = X.transpose(1, 0, 2, 3)              # (C, B, H, W) view
        saved = []
        for i, (c_in, c_out, h, w) in enumerate(self.blocks):
            # im2col: cols[c, di, dj, b, y, x] = xpad[c, b, y + di, x + dj]
            xpad = self._work(("pad", i), (c_in, B, h + k - 1, w + k - 1))
            xpad[:, :, p:p + h, p:p + w] = x     # the border is never written: stays zero
            cols = self._work(("cols", i), (c_in, k, k, B, h, w))
            for di in range(k):
                for dj in range(k):
                    cols[:, di, dj] = xpad[:, :, di:di + h, dj:dj + w]
            cols2 = cols.reshape(c_in * k * k, B * h * w)

            # convolution as one GEMM, then bias
            z = self._work(("z", i), (c_out, B, h, w))
            xp.matmul(v[f"conv{i}.W"].reshape(c_out, -1), cols2, out=z.reshape(c_out, -1))
            z += v[f"conv{i}.b"].reshape(c_out, 1, 1, 1)

            # 2x2 max-pool (floored), then ReLU on the pooled map
            pooled, choice = self._pool(i, z, keep)
            xp.maximum(pooled, 0, out=pooled)
            saved.append((cols2, choice, pooled))
            x = pooled
        feats = x.transpose(1, 0, 2, 3).reshape(B, self.n_features)   # copy, (c, h, w) order
        logits = feats @ v["fc.W"]
        logits += v["fc.b"]
        return logits, feats, saved

    def _pool(self, i, z, keep):
        """Max over the 2x2 windows of z (C, B, H, W), floored: (C, B, H//2, W//2).

        With keep, also returns which element won, as three masks: right over
        left in the top pair, right over left in the bottom pair, bottom pair
        over top pair. Comparisons are strict, so ties go to the first element
        in row-major order and the gradient reaches exactly one of them.
        """
        xp = self.xp
        a, b, c, d = (_window(z, di, dj) for di, dj in _WINDOW)
        out = self._work(("pool", i), a.shape)
        bot = self._work(("pool_bot", i), a.shape)
        xp.maximum(a, b, out=out)
        xp.maximum(c, d, out=bot)
        choice = (b > a, d > c, bot > out) if keep else None
        xp.maximum(out, bot, out=out)
        return out, choice

    def _unpool(self, i, shape, choice, dpool):
        """Pooling backward: route each window's gradient to the element that won."""
        xp = self.xp
        right_top, right_bot, bottom = choice
        dz = self._work(("dz", i), shape)        # odd last row/col: never written, stays zero
        a, b, c, d = (_window(dz, di, dj) for di, dj in _WINDOW)
        dbot = dpool * bottom
        dtop = dpool - dbot                      # exact: dpool or 0
        xp.multiply(dtop, right_top, out=b)
        xp.subtract(dtop, b, out=a)
        xp.multiply(dbot, right_bot, out=d)
        xp.subtract(dbot, d, out=c)
        return dz

    # -- backward ------------------------------------------------------------

    def _data_loss_grad(self, params, X, y, grad):
        xp, k, p = self.xp, self.kernel, self.pad
        X = self._images(X)
        B = X.shape[0]
        v = self.layout.views(params)
        logits, feats, saved = self._forward(v, X, keep=grad is not None)
        loss = softmax_xent_(logits, self._labels(y), xp)
        if grad is None:
            return loss
        g = self.layout.views(grad)

        # dense layer
        dlog = logits
        dlog *= 1.0 / B
        xp.matmul(feats.T, dlog, out=g["fc.W"])
        dlog.sum(axis=0, out=g["fc.b"])
        c, _, h, w = saved[-1][2].shape
        dx = (dlog @ v["fc.W"].T).reshape(B, c, h, w).transpose(1, 0, 2, 3)

        for i in range(len(self.blocks) - 1, -1, -1):
            c_in, c_out, h, w = self.blocks[i]
            cols2, choice, pooled = saved[i]

            # ReLU, then pooling backward
            dz = self._unpool(i, (c_out, B, h, w), choice, dx * (pooled > 0))
            dz2 = dz.reshape(c_out, B * h * w)

            # conv weights and bias
            xp.matmul(dz2, cols2.T, out=g[f"conv{i}.W"].reshape(c_out, -1))
            dz2.sum(axis=1, out=g[f"conv{i}.b"])
            if i == 0:
                break

            # input gradient: GEMM into the cols buffer (no longer needed), then col2im
            xp.matmul(v[f"conv{i}.W"].reshape(c_out, -1).T, dz2, out=cols2)
            dcols = cols2.reshape(c_in, k, k, B, h, w)
            dxpad = self._work(("dpad", i), (c_in, B, h + k - 1, w + k - 1))
            dxpad.fill(0)
            for di in range(k):
                for dj in range(k):
                    dxpad[:, :, di:di + h, dj:dj + w] += dcols[:, di, dj]
            dx = dxpad[:, :, p:p + h, p:p + w]
        return loss

    def predict(self, params, X):
        """Class ids, shape (B,)."""
        logits, _, _ = self._forward(self.layout.views(params), self._images(X))
        return logits.argmax(axis=1)
