"""The sections of the run configuration: one dataclass per TOML table, each
field with its default and a one-line meaning, and the rules of each section
(`validate`). Reading and writing TOML is config.py's, which re-exports
everything here; the algorithm's own rules are its Options' (catalog.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import ConfigError  # noqa: F401  (defined in errors.py; modules import it from config)



@dataclass(frozen=True)
class Catalog:
    """What config needs to know of the plug-ins, handed in by the entry
    layer (mpidsgd/catalog.py) so that this module imports no registry:
    the registered algorithms' Options classes (None: no options), the
    algorithms that accept algo.momentum = "auto", and the model names."""

    options: dict
    auto_momentum: frozenset = frozenset()
    models: tuple = ()


def doc(default, text, **kw):
    """A dataclass field with a default and a one-line meaning."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"doc": text, **kw})
    return field(default=default, metadata={"doc": text, **kw})


@dataclass
class RunConfig:
    seed: int = doc(0, "seed of every random stream (data, init, algorithm)")
    steps: int = doc(0, "training steps per rank; 0 = use run.epochs")
    epochs: float = doc(0.0, "epochs of the local shard when run.steps = 0")
    eval_every: int = doc(100, "evaluate every this many steps (0 = only at the end)")
    log_every: int = doc(10, "append a training record to metrics.jsonl every this many steps")
    out_dir: str = doc("runs/latest", "output folder: config.toml, metrics.jsonl, summary.json")
    dtype: str = doc("float32", "parameter and data dtype: float32 | float64")
    device: str = doc("cpu", "cpu | cuda (one GPU per rank, bound by node-local rank)")
    time_limit_s: float = doc(0.0, "stop after this many seconds, with a checkpoint (0 = no limit)")
    progress: bool = doc(True, "rank 0 prints a progress line at each evaluation")

    def validate(self):
        _check(self.steps >= 0, "run.steps", "must be >= 0")
        _check(self.epochs >= 0, "run.epochs", "must be >= 0")
        if self.steps == 0 and self.epochs == 0:
            raise ConfigError("run.steps and run.epochs are both 0: set run.steps (steps per rank) "
                              "or run.epochs (epochs of each rank's shard) above 0")
        _check(self.eval_every >= 0, "run.eval_every", "must be >= 0")
        _check(self.log_every >= 1, "run.log_every", "must be >= 1")
        _check(self.dtype in ("float32", "float64"), "run.dtype", "must be float32 or float64")
        _check(self.device in ("cpu", "cuda"), "run.device", "must be cpu or cuda")
        _check(self.time_limit_s >= 0, "run.time_limit_s", "must be >= 0")


@dataclass
class DataConfig:
    name: str = doc("synthetic", "synthetic | file")
    task: str = doc("auto", "classification | binary | regression | auto (from the model: "
                    "regression for a regression model, else classification)")
    path: str = doc("", "training file (.npz, .h5/.hdf5, .svm/.libsvm/.txt, IDX)")
    labels_path: str = doc("", "IDX labels file (default: the sibling *-labels-idx1-ubyte*)")
    test_path: str = doc("", "test file in the same format (default: a seeded split)")
    label_column: object = doc(-1, "CSV: the label column, an index (-1 = last) or a header name")
    test_fraction: float = doc(0.2, "share of the data held out for testing without test_path")
    batch_size: int = doc(32, "per-rank mini-batch size")
    normalize: bool = doc(True, "standardise features with statistics of the training set")
    samples_per_rank: int = doc(0, "synthetic: training samples per rank (weak scaling); 0 = n_samples")
    n_samples: int = doc(32768, "synthetic: total training samples (split over ranks)")
    n_test: int = doc(8192, "synthetic: test samples")
    n_features: int = doc(64, "synthetic: features per sample")
    n_classes: int = doc(10, "synthetic classification: number of classes")
    noise: float = doc(0.1, "synthetic: label noise (classification) or target noise std (regression)")

    def validate(self):
        _check(self.name in ("synthetic", "file"), "data.name", "must be synthetic or file")
        _check(self.task in ("auto", "classification", "regression", "binary"), "data.task",
               "must be auto, classification, binary or regression")
        lc = self.label_column
        _check((isinstance(lc, int) and not isinstance(lc, bool)) or (isinstance(lc, str) and lc != ""),
               "data.label_column", f"must be a column index or a header name, got {_clip(lc)}")
        _check(self.name != "file" or bool(self.path), "data.path", "is required when data.name = 'file'")
        _check(0 < self.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")
        _check(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        _check(self.samples_per_rank >= 0, "data.samples_per_rank", "must be >= 0")
        _check(self.n_samples >= 1, "data.n_samples", "must be >= 1")
        _check(self.n_test >= 1, "data.n_test", "must be >= 1")
        _check(self.n_features >= 1, "data.n_features", "must be >= 1")
        _check(self.n_classes >= 2, "data.n_classes", "must be >= 2")
        _check(self.noise >= 0, "data.noise", "must be >= 0")


@dataclass
class ModelConfig:
    name: str = doc("mlp", "ridge | logreg | softmax | mlp | cnn | torch (a PyTorch module, docs/torch.md)")
    hidden: list = doc([128], "mlp hidden layer widths", item=int)
    channels: list = doc([8, 16], "cnn channels of the two conv blocks", item=int)
    kernel: int = doc(3, "cnn convolution kernel size")
    loss: str = doc("cross_entropy", "mlp and torch: cross_entropy (classification) | mse (regression, one output)")
    l2: float = doc(0.0, "L2 regularisation strength (part of the loss)")
    factory: str = doc("", "torch: 'package.module:callable', called as factory(input_shape, n_outputs)")
    path: str = doc("", "torch: a folder searched first when importing model.factory")
    backward: str = doc("auto", "torch: auto (a Sequential of Linear, ReLU, Tanh, Sigmoid, "
                        "Flatten, Identity trains without autograd on the CPU) | autograd")

    def validate(self, catalog: Catalog):
        _check(self.name in catalog.models, "model.name",
               f"unknown model {_clip(self.name)}; one of {sorted(catalog.models)}")
        if self.name == "torch":
            _check_torch(self)
        _check(all(h >= 1 for h in self.hidden), "model.hidden", "widths must be >= 1")
        _check(len(self.channels) == 2 and all(c >= 1 for c in self.channels),
               "model.channels", "must be two positive channel counts")
        _check(self.kernel >= 1 and self.kernel % 2 == 1, "model.kernel", "must be odd and >= 1")
        _check(self.loss in ("cross_entropy", "mse"), "model.loss",
               f"must be cross_entropy or mse, got {_clip(self.loss)}")
        _check(self.loss == "cross_entropy" or self.name in ("mlp", "torch"), "model.loss",
               "= mse needs model.name = mlp or torch")
        _check(self.l2 >= 0, "model.l2", "must be >= 0")


@dataclass
class AlgoConfig:
    name: str = doc("sgd", "training algorithm (registry name)")
    lr: float = doc(0.1, "learning rate (peak value under a schedule)")
    momentum: object = doc(0.0, "heavy-ball momentum of the local optimizer (asgd: at the server; "
                                "\"auto\" = tuned from the measured staleness; centralvr, saga, svrg: 0)")
    nesterov: bool = doc(False, "Nesterov momentum")
    weight_decay: float = doc(0.0, "decoupled weight decay (SGD: added to the gradient)")
    optimizer: str = doc("sgd", "local optimizer: sgd | adamw")
    beta1: float = doc(0.9, "AdamW first-moment decay")
    beta2: float = doc(0.999, "AdamW second-moment decay")
    eps: float = doc(1e-8, "AdamW epsilon")
    schedule: str = doc("constant", "learning-rate schedule: constant | warmup | cosine | step")
    schedule_warmup: int = doc(0, "linear warm-up steps (warmup and cosine schedules)")
    schedule_step_every: int = doc(1000, "step schedule: multiply lr by schedule_gamma every this many steps")
    schedule_gamma: float = doc(0.1, "step schedule decay factor")
    schedule_min_lr: float = doc(0.0, "cosine schedule: final learning rate")
    options: object = field(default=None, metadata={"doc": "algorithm-specific options", "skip": True})

    def validate(self, catalog: Catalog):
        _check(self.name in catalog.options, "algo.name",
               f"unknown algorithm {_clip(self.name)}; one of {sorted(catalog.options)}")
        _check(self.lr >= 0, "algo.lr", "must be >= 0")
        if self.momentum == "auto":
            _check(self.name in catalog.auto_momentum, "algo.momentum",
                   f"= \"auto\" is an asgd option, not {self.name}'s")
        else:
            _check(isinstance(self.momentum, (int, float)) and not isinstance(self.momentum, bool),
                   "algo.momentum", f"must be a number or \"auto\", got {self.momentum!r}")
            self.momentum = float(self.momentum)
            _check(math.isfinite(self.momentum), "algo.momentum",
                   f"must be a finite number, got {self.momentum}")
            _check(-1 < self.momentum < 1, "algo.momentum", "must be in (-1, 1)")
        _check(self.weight_decay >= 0, "algo.weight_decay", "must be >= 0")
        _check(self.optimizer in ("sgd", "adamw"), "algo.optimizer", "must be sgd or adamw")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "algo.beta1", "betas must be in [0, 1)")
        _check(self.eps > 0, "algo.eps", "must be > 0")
        _check(self.schedule in ("constant", "warmup", "cosine", "step"), "algo.schedule",
               "must be constant, warmup, cosine or step")
        _check(self.schedule_warmup >= 0, "algo.schedule_warmup", "must be >= 0")
        _check(self.schedule_step_every >= 1, "algo.schedule_step_every", "must be >= 1")
        _check(0 < self.schedule_gamma <= 1, "algo.schedule_gamma", "must be in (0, 1]")


@dataclass
class EmulateConfig:
    alpha: float = doc(0.0, "emulated latency: seconds per message sent")
    beta: float = doc(0.0, "emulated bandwidth: seconds per byte sent")
    compute: str = doc("none", "emulated compute per gradient: none | fixed | exponential (added delays) | exponential_total (whole time ~ Exp)")
    compute_s: float = doc(0.0, "fixed delay, or the mean of the exponential delay or total time, in seconds")
    slow_ranks: list = doc([], "ranks that compute slower (stragglers)", item=int)
    slowdown: float = doc(1.0, "compute-time factor of the slow ranks (3.0 = three times slower)")

    def validate(self):
        _check(self.alpha >= 0, "comm.emulate.alpha", "must be >= 0")
        _check(self.beta >= 0, "comm.emulate.beta", "must be >= 0")
        _check(self.compute in ("none", "fixed", "exponential", "exponential_total"),
               "comm.emulate.compute", "must be none, fixed, exponential or exponential_total")
        _check(self.compute_s >= 0, "comm.emulate.compute_s", "must be >= 0")
        _check(self.compute != "exponential_total" or self.compute_s > 0,
               "comm.emulate.compute_s", "must be > 0 with compute = exponential_total")
        _check(self.slowdown >= 1, "comm.emulate.slowdown", "must be >= 1")

    @property
    def active(self):
        return self.alpha > 0 or self.beta > 0 or self.compute != "none" or bool(self.slow_ranks)


@dataclass
class CommConfig:
    cuda_aware: bool = doc(False, "pass device buffers to MPI directly (needs CUDA-aware MPI)")
    emulate: EmulateConfig = field(default_factory=EmulateConfig, metadata={"doc": "emulation"})

    def validate(self):
        self.emulate.validate()


@dataclass
class CheckpointConfig:
    dir: str = doc("", "checkpoint folder (default: <run.out_dir>/checkpoints)")
    every: int = doc(0, "write a checkpoint every this many steps (0 = never; asynchronous algorithms: rank 0's steps)")
    keep_last: int = doc(3, "keep this many newest checkpoints (0 = keep all)")
    allow_reshard: bool = doc(False, "resume at another world size: shared state restored, per-rank state reset")

    def validate(self):
        _check(self.every >= 0, "checkpoint.every", "must be >= 0")
        _check(self.keep_last >= 0, "checkpoint.keep_last", "must be >= 0")


@dataclass
class DebugConfig:
    fail_at_step: int = doc(-1, "testing aid: raise an error at this step (-1 = never)")
    fail_rank: int = doc(0, "testing aid: the rank that raises")
    slow_checkpoint_s: float = doc(0.0, "testing aid: sleep this long inside each checkpoint write")
    check_kernels: bool = doc(False, "validate the CUDA kernels' device inputs (a host read-back per call; kernels.set_checks)")


SECTIONS = {"run": RunConfig, "data": DataConfig, "model": ModelConfig, "algo": AlgoConfig,
            "comm": CommConfig, "checkpoint": CheckpointConfig, "debug": DebugConfig}


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    def validate(self, catalog: Catalog):
        """The rules of the common sections. The algorithm's own rules run
        later, once, with the world size: catalog.validate (entry layer)."""
        for name in SECTIONS:
            sec = getattr(self, name)
            if name in ("model", "algo"):
                sec.validate(catalog)
            elif hasattr(sec, "validate"):
                sec.validate()
        return self


def _check(ok, key, msg):
    if not ok:
        raise ConfigError(f"{key} {msg}")


def _check_torch(m):
    """model.name = "torch": what can be decided without importing torch."""
    import importlib.util
    _check(importlib.util.find_spec("torch") is not None, "model.name",
           "= 'torch' needs PyTorch, which is not installed: pip install 'mpidsgd[torch]'")
    _check(m.backward in ("auto", "autograd"), "model.backward",
           f"must be auto | autograd, got {_clip(m.backward)}")
    mod, sep, attr = m.factory.partition(":")
    _check(bool(sep and mod and attr), "model.factory",
           f"must look like 'package.module:callable' for model.name = 'torch', got {m.factory!r}")


def _clip(value, limit=80) -> str:
    """repr(value) cut to `limit` characters: error lines quote, never dump."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
