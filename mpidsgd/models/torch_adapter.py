"""PyTorch modules on mpidsgd's flat buffers (`model.name = "torch"`).

    model = TorchModel((784,), 10, factory="examples.torch_models:mlp", loss="cross_entropy")

The factory is called once as `factory(input_shape, n_outputs)` under
`torch.manual_seed(seed)`, so every rank builds the same module with the
same initial values. The adapter then makes the module's parameters views of
whatever flat buffer it is handed:

- layout order: `module.named_parameters()` order (registration order, shared
  parameters once), each entry under its PyTorch name and PyTorch shape, so a
  `nn.Linear` weight is stored (out, in), row-major;
- `loss_grad(params, X, y, grad)` points every parameter's storage at its
  slice of `params` and every `.grad` at its slice of `grad` (zero-copy:
  `torch.from_numpy` on the CPU, DLPack from CuPy on a GPU), zeroes `grad`
  and runs forward and backward; autograd accumulates straight into the
  slices. A buffer handed in before is re-pointed, not re-wrapped (a small
  cache of tensor views per buffer), so a step allocates and copies nothing
  besides what autograd itself needs;
- a `nn.Sequential` of the layers torch_direct.py knows trains without
  autograd on the CPU (the direct path: every gradient written straight into
  its slice); `model.backward = "autograd"` turns that off;
- floating non-parameter buffers (BatchNorm running mean and variance) live in
  one flat `state` array the module's buffers view; integer buffers
  (`num_batches_tracked`) stay in the module. Both are `state_dict()`:
  per-rank state that checkpoints carry. Periodic averaging averages `state`
  at its sync points; every other algorithm leaves it rank-local.

Training calls run the module in train mode; `loss` and `predict`
(evaluation) in eval mode under `inference_mode`, so they never move BatchNorm
statistics. PyTorch is imported only here, and only for model.name = "torch".
"""
from __future__ import annotations

import importlib
import sys
from collections import OrderedDict

import numpy

from ..config import ConfigError
from ..flat import FlatLayout
from .base import Model
from .torch_direct import direct_plan

LOSSES = {"cross_entropy": "classification", "mse": "regression"}
BACKWARDS = ("auto", "autograd")
CACHE = 16         # entries of tensor views kept (two per buffer at most)


def import_torch():
    """torch, or a ConfigError that names the extra."""
    try:
        import torch
    except ImportError:
        raise ConfigError("model.name = 'torch' needs PyTorch, which is not installed: "
                          "pip install 'mpidsgd[torch]' (or a torch build of your choice)") from None
    return torch


def one_line(exc) -> str:
    return f"{type(exc).__name__}: " + " ".join(str(exc).split())


def load_factory(spec: str, path: str = ""):
    """The callable named by "package.module:callable" (model.path searched first)."""
    mod_name, sep, attr = spec.partition(":")
    if not (sep and mod_name and attr):
        raise ConfigError(f"model.factory must look like 'package.module:callable', got {spec!r}")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:       # noqa: BLE001 - any failure is the user's input
        raise ConfigError(f"model.factory {spec!r} cannot be imported ({one_line(exc)})") from None
    if not callable(obj):
        raise ConfigError(f"model.factory {spec!r} is not callable")
    return obj


def fast_backward(torch, device, module):
    """`backward(loss)`: the gradient of a scalar loss into the leaves' `.grad`.

    On the CPU this calls the autograd engine directly, seeded with a cached
    1: `loss.backward()` spends tens of microseconds per call in Python
    (argument checks, a fresh ones tensor, context bookkeeping for compiled
    autograd), several percent of a small model's step. The engine's entry
    point is not public API, so it is probed once on a tiny graph and
    `loss.backward()` is used wherever the probe fails or off the CPU.
    """
    engine = getattr(torch.autograd.Variable, "_execution_engine", None)
    dtype = next(module.parameters()).dtype
    one = torch.ones((), dtype=dtype, device=device)

    def direct(loss):
        engine.run_backward((loss,), (one,), False, False, (),
                            allow_unreachable=True, accumulate_grad=True)

    def public(loss):
        loss.backward()

    if engine is None or device.type != "cpu":
        return public
    try:     # the probe: d(3x)/dx accumulated into x.grad
        x = torch.zeros((), dtype=dtype, requires_grad=True)
        direct(3 * x)
        ok = x.grad is not None and float(x.grad) == 3.0
    except Exception:      # noqa: BLE001 - any failure: the public path
        ok = False
    return direct if ok else public


class TorchModel(Model):
    """A factory-built `nn.Module` whose parameters view mpidsgd's flat buffers."""

    name = "torch"
    # no per-sample derivatives, and a gradient may depend on more than (params,
    # batch) (BatchNorm statistics, dropout): variance-reduced tables refuse it
    per_sample_derivs = False
    stored_gradients = False

    def __init__(self, input_shape, n_outputs, *, factory, loss="cross_entropy", path="",
                 task=None, seed=0, backward="auto", **kw):
        if backward not in BACKWARDS:
            raise ConfigError(f"model.backward must be one of {' | '.join(BACKWARDS)}, "
                              f"got {backward!r}")
        self.factory, self.loss_name, self.path = factory, loss, path
        self.backward_mode = backward
        self.task_expected, self.seed = task, int(seed)
        super().__init__(input_shape, n_outputs, **kw)

    # -- construction -----------------------------------------------------------------
    def _build(self):
        self._check_loss()
        torch = self.torch = import_torch()
        module = self.module = self._make_module(torch)
        self.device = self._device(torch)
        module.to(device=self.device, dtype={"float32": torch.float32,
                                             "float64": torch.float64}[self.dtype.name])
        self._build_layout(module)
        self._pviews, self._gviews = OrderedDict(), OrderedDict()
        self._bound = self._bound_grad = None
        self._training = None
        self._build_state(module)
        self._loss_fn = (torch.nn.functional.cross_entropy if self.loss_name == "cross_entropy"
                         else self._mse)
        self._backward = fast_backward(torch, self.device, self.module)
        self._direct, self.direct_reason = self._plan_direct(torch, module)
        self._bind(self._home)

    @property
    def path_line(self) -> str:
        """The start-up line that says how training steps run."""
        if self._direct is not None:
            return "mpidsgd: torch model: training steps run without autograd (the direct path)"
        return f"mpidsgd: torch model: training steps run through autograd ({self.direct_reason})"

    def _plan_direct(self, torch, module):
        """(plan, None) when training steps skip autograd (torch_direct.py),
        else (None, why not)."""
        if self.backward_mode == "autograd":
            return None, "model.backward = 'autograd'"
        if self.device.type != "cpu":
            return None, "the direct path runs on the CPU only"
        return direct_plan(torch, module, self._params)

    def _check_loss(self):
        """model.loss is known and fits the data task."""
        if self.loss_name not in LOSSES:
            raise ConfigError(f"model.loss must be one of {' | '.join(LOSSES)}, got {self.loss_name!r}")
        self.task = LOSSES[self.loss_name]
        if self.task_expected is not None and self.task_expected != self.task:
            fits = " or ".join(repr(k) for k, t in LOSSES.items() if t == self.task_expected)
            raise ConfigError(f"model.loss = {self.loss_name!r} does not fit the data task "
                              f"{self.task_expected!r}; use {fits}")

    def _build_layout(self, module):
        """Layout in named_parameters order; `_home` keeps the factory's values."""
        named = list(module.named_parameters())
        for name, p in named:
            self.layout.add(name, tuple(p.shape))
        self._params = [p for _, p in named]
        self._home = self.zeros()
        home = self._as_torch(self._home)
        with self.torch.no_grad():
            for name, p in named:
                sl = self.layout.slice(name)
                home[sl.start:sl.stop].copy_(p.detach().reshape(-1))

    def _make_module(self, torch):
        spec = self.factory
        fn = load_factory(spec, self.path)
        torch.manual_seed(self.seed)         # the same initial values on every rank
        try:
            module = fn(tuple(self.input_shape), self.n_outputs)
        except Exception as exc:       # noqa: BLE001 - any failure is the user's input
            raise ConfigError(f"model.factory {spec!r} raised {one_line(exc)}") from None
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(f"model.factory {spec!r} returned {type(module).__name__}, "
                              f"not a torch.nn.Module")
        if not any(True for _ in module.parameters()):
            raise ConfigError(f"model.factory {spec!r} built a module with no parameters")
        return module

    def _device(self, torch):
        if self.xp is numpy:
            return torch.device("cpu")
        return torch.device("cuda", self.xp.cuda.Device().id)

    def _build_state(self, module):
        """Floating buffers -> views of one flat `state` array; others stay put."""
        torch = self.torch
        self.state_layout = FlatLayout()
        floats, self._int_buffers = [], []
        for full, b in module.named_buffers():
            if b is None:
                continue
            owner, _, leaf = full.rpartition(".")
            holder = module.get_submodule(owner) if owner else module
            if torch.is_floating_point(b):
                self.state_layout.add(full, tuple(b.shape))
                floats.append((full, holder, leaf, b))
            else:
                self._int_buffers.append((full, b))
        self.state = None
        if not floats:
            return
        self.state = self.xp.zeros(self.state_layout.size, dtype=self.dtype)
        flat = self._as_torch(self.state)
        for full, holder, leaf, b in floats:
            sl = self.state_layout.slice(full)
            view = flat[sl.start:sl.stop].view(b.shape)
            view.copy_(b.detach())
            holder._buffers[leaf] = view     # the module now updates the flat array

    # -- zero-copy views ------------------------------------------------------------------
    def _as_torch(self, a):
        """The same memory as a torch tensor: from_numpy (CPU) or DLPack (CuPy)."""
        if self.xp is numpy:
            return self.torch.from_numpy(a)
        return self.torch.from_dlpack(a)

    def _views(self, cache, buf):
        """Per-parameter tensor views of the flat `buf`, cached by its address
        and, for the array object last handed in, by the object itself (cheaper)."""
        hit = cache.get(id(buf))
        if hit is not None and hit[0] is buf:
            return hit[1]
        key = (buf.__array_interface__["data"][0] if self.xp is numpy else buf.data.ptr)
        views = cache.get(key)
        if views is None:
            if not buf.flags.c_contiguous:
                raise ValueError("torch model: flat buffers must be contiguous")
            flat = self._as_torch(buf)
            views = [flat[sl.start:sl.stop].view(shape) for sl, shape in
                     ((self.layout.slice(n), s) for n, s, _ in self.layout.entries)]
            # the cache keeps `buf` alive, so its address names it alone
            cache[key] = views = (buf, views)
        cache[id(buf)] = (buf, views[1])       # alive too: the id is not reused
        while len(cache) > CACHE:
            cache.popitem(last=False)
        return views[1]

    def _bind(self, params):
        """Every parameter's storage -> its slice of `params` (no copy)."""
        if params is self._bound:
            return
        for p, v in zip(self._params, self._views(self._pviews, params)):
            p.data = v
        self._bound = params

    def _bind_grad(self, grad):
        if grad is self._bound_grad:
            return
        for p, v in zip(self._params, self._views(self._gviews, grad)):
            p.grad = v
        self._bound_grad = grad

    def _mode(self, training):
        if self._training is not training:
            self.module.train(training)
            self._training = training

    # -- numerics ---------------------------------------------------------------------
    def _inputs(self, X):
        X = self._flat_input(X)
        return self._as_torch(X.reshape((X.shape[0],) + self.input_shape))

    def _targets(self, y):
        if self.task == "classification":
            return self._as_torch(self.xp.ascontiguousarray(self._labels(y), dtype=self.xp.int64))
        return self._as_torch(self.xp.ascontiguousarray(self.xp.asarray(y, dtype=self.dtype).reshape(-1)))

    def _mse(self, out, y):
        """Mean squared error over the batch (one output per sample)."""
        return self.torch.nn.functional.mse_loss(out.reshape(y.shape), y)

    def _data_loss_grad(self, params, X, y, grad):
        torch = self.torch
        self._bind(params)
        Xt, yt = self._inputs(X), self._targets(y)
        if grad is None:
            self._mode(False)
            with torch.inference_mode():
                return self._loss_fn(self.module(Xt), yt).item()
        self._mode(True)
        if self._direct is not None:     # writes every gradient slice: no zeroing
            return self._direct.loss_grad(Xt, yt, self._views(self._pviews, params),
                                          self._views(self._gviews, grad), self.loss_name)
        self._bind_grad(grad)
        grad.fill(0)                     # autograd adds into the views
        loss = self._loss_fn(self.module(Xt), yt)
        self._backward(loss)
        return loss.item()

    def predict(self, params, X):
        """Class ids (cross_entropy) or outputs (mse), shape (B,), eval mode."""
        self._check_flat(params, "params")
        self._bind(params)
        self._mode(False)
        with self.torch.inference_mode():
            out = self.module(self._inputs(X))
            out = out.argmax(dim=1) if self.task == "classification" else out.reshape(-1)
        return out.numpy() if self.xp is numpy else self.xp.from_dlpack(out)

    # -- Model interface ------------------------------------------------------------------
    def init(self, params, rng=None):
        """The factory's initial values (drawn under torch.manual_seed(run.seed));
        `rng` is not used. The module then views `params`."""
        self._check_flat(params, "params")
        params[...] = self._home
        self._bind(params)

    def state_dict(self) -> dict:
        out = {} if self.state is None else {"buffers": self.state}
        for name, b in self._int_buffers:
            out[name] = b.detach().cpu().numpy()
        return out

    def load_state_dict(self, d: dict):
        if self.state is not None:
            self.state[...] = self.xp.asarray(d["buffers"])
        for name, b in self._int_buffers:
            b.copy_(self.torch.from_numpy(numpy.asarray(d[name]).reshape(tuple(b.shape))))
