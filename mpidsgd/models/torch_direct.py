"""Forward and backward without autograd, for sequential stacks of known layers.

On a small model PyTorch's eager autograd costs more than the arithmetic:
recording the graph, running the engine, and a tensor per gradient that is
then added into the flat gradient buffer. For a module that is an
`nn.Sequential` (nested ones too) of the layer types below, and nothing else,
the adapter runs the same operations itself, recording no graph: the
forward keeps what each layer's derivative needs, the backward calls the
derivative operations autograd would call (`threshold_backward`,
`tanh_backward`, `sigmoid_backward`, `nll_loss_backward`,
`_log_softmax_backward_data`) and writes every parameter gradient straight
into its slice of the flat gradient buffer with `out=`.

    plan, reason = direct_plan(torch, module, params)   # plan None: autograd, for `reason`
    loss = plan.loss_grad(X, y, P, G, loss_name)  # P, G: tensor views, layout order

`direct_plan` says None, with the reason, for anything it does not know: a
layer type outside the table (subclasses included), a forward or backward
hook, a parameter used twice or frozen, a parameter no layer owns. Layers that
behave differently in train and eval mode (dropout, BatchNorm) are outside
the table, so the plan is the same in both modes.
"""
from __future__ import annotations

MEAN = 1          # ATen's reduction enum: mean
IGNORE = -100     # cross_entropy's default ignore_index


class Linear:
    """y = x Wᵀ + b over the last dimension."""

    def __init__(self, layer, index):
        self.w = index[id(layer.weight)]
        self.b = None if layer.bias is None else index[id(layer.bias)]
        self.n_in, self.n_out = layer.in_features, layer.out_features
        self.P = self.Wt = None

    def forward(self, torch, x, P):
        self.shape = x.shape                   # (..., n_in): the leading dims are rows
        self.x = x = x.reshape(-1, self.n_in) if x.dim() != 2 else x
        if P is not self.P:                    # P is cached per buffer: so is Wᵀ
            self.P, self.Wt = P, P[self.w].t()
        y = torch.mm(x, self.Wt) if self.b is None else torch.addmm(P[self.b], x, self.Wt)
        return y if len(self.shape) == 2 else y.reshape(self.shape[:-1] + (self.n_out,))

    def backward(self, torch, dy, P, G, need_dx):
        dy = dy.reshape(-1, self.n_out) if dy.dim() != 2 else dy
        torch.mm(dy.t(), self.x, out=G[self.w])
        if self.b is not None:
            torch.sum(dy, 0, out=G[self.b])
        self.x = None
        if not need_dx:
            return None
        dx = torch.mm(dy, P[self.w])
        return dx if len(self.shape) == 2 else dx.reshape(self.shape)


class ReLU:
    def forward(self, torch, x, P):
        self.y = y = torch.relu(x)
        return y

    def backward(self, torch, dy, P, G, need_dx):
        dx = torch.ops.aten.threshold_backward(dy, self.y, 0)
        self.y = None
        return dx


class Tanh:
    def forward(self, torch, x, P):
        self.y = y = torch.tanh(x)
        return y

    def backward(self, torch, dy, P, G, need_dx):
        dx = torch.ops.aten.tanh_backward(dy, self.y)
        self.y = None
        return dx


class Sigmoid:
    def forward(self, torch, x, P):
        self.y = y = torch.sigmoid(x)
        return y

    def backward(self, torch, dy, P, G, need_dx):
        dx = torch.ops.aten.sigmoid_backward(dy, self.y)
        self.y = None
        return dx


class Flatten:
    def __init__(self, layer, index):
        self.start, self.end = layer.start_dim, layer.end_dim

    def forward(self, torch, x, P):
        self.shape = x.shape
        return x.flatten(self.start, self.end)

    def backward(self, torch, dy, P, G, need_dx):
        return dy.reshape(self.shape)


class Identity:
    def forward(self, torch, x, P):
        return x

    def backward(self, torch, dy, P, G, need_dx):
        return dy


def _table(nn):
    """Exact layer type -> step (a subclass may change forward: not listed)."""
    return {nn.Linear: Linear, nn.ReLU: lambda layer, index: ReLU(),
            nn.Tanh: lambda layer, index: Tanh(), nn.Sigmoid: lambda layer, index: Sigmoid(),
            nn.Flatten: Flatten, nn.Identity: lambda layer, index: Identity()}


def _hooked(m) -> bool:
    return any(getattr(m, name, None) for name in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _global_hooks(torch) -> bool:
    mod = torch.nn.modules.module
    return any(getattr(mod, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
        "_global_backward_pre_hooks"))


def _leaves(nn, module):
    """The layers of a (nested) Sequential in call order."""
    if type(module) is nn.Sequential:
        for child in module:
            yield from _leaves(nn, child)
    else:
        yield module


class DirectPlan:
    """A module's layers as steps: forward in order, then backward in reverse."""

    def __init__(self, torch, steps):
        self.torch, self.steps = torch, steps
        self.one = {}

    def loss_grad(self, X, y, P, G, loss_name):
        """The batch's mean loss (a float); every gradient written into G."""
        torch, out = self.torch, X
        # no tensor here requires grad (the adapter makes X, y, P and G with
        # from_numpy), so no graph is recorded without a no_grad() context
        for step in self.steps:
            out = step.forward(torch, out, P)
        loss, dout = (self._cross_entropy(out, y) if loss_name == "cross_entropy"
                      else self._mse(out, y))
        for i in range(len(self.steps) - 1, -1, -1):
            dout = self.steps[i].backward(torch, dout, P, G, i > 0)
        return loss

    def _cross_entropy(self, z, y):
        aten = self.torch.ops.aten
        lsm = self.torch.log_softmax(z, 1)
        loss, total = aten.nll_loss_forward(lsm, y, None, MEAN, IGNORE)
        one = self.one.get(lsm.dtype)
        if one is None:
            one = self.one[lsm.dtype] = self.torch.ones((), dtype=lsm.dtype)
        d = aten.nll_loss_backward(one, lsm, y, None, MEAN, IGNORE, total)
        return loss.item(), aten._log_softmax_backward_data(d, lsm, 1, lsm.dtype)

    def _mse(self, out, y):
        """mean (out - y)², as torch.nn.functional.mse_loss."""
        r = out.reshape(y.shape) - y
        return (r * r).mean().item(), (r * (2.0 / r.numel())).reshape(out.shape)


def direct_plan(torch, module, params):
    """(DirectPlan, None) for a module the table covers, else (None, reason).
    `params` are the module's parameters in layout order."""
    nn = torch.nn
    if _global_hooks(torch):
        return None, "global module hooks are registered"
    index = {id(p): i for i, p in enumerate(params)}
    table, steps, owned = _table(nn), [], []
    for m in module.modules():
        if _hooked(m):
            return None, f"{type(m).__name__} has hooks"
    for layer in _leaves(nn, module):
        make = table.get(type(layer))
        if make is None:
            return None, f"layer {type(layer).__name__} is not one the direct path knows"
        owned += [id(p) for p in layer.parameters(recurse=False)]
        steps.append(make(layer, index))
    if len(owned) != len(set(owned)):
        return None, "a parameter is used by two layers"
    if sorted(owned) != sorted(index) or not steps:
        return None, "a parameter belongs to no listed layer"
    if not all(p.requires_grad for p in params):
        return None, "a parameter is frozen (requires_grad = False)"
    return DirectPlan(torch, steps), None
