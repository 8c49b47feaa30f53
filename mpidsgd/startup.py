"""Start-up decisions and checks of `python -m mpidsgd.train`, before any
data is read or memory allocated: the label task, the device, CUDA-aware
MPI, the output folder and the model's memory. Each failure is a ConfigError whose message
train.py prints as one `mpidsgd: error:` line on rank 0 (exit 2 everywhere).
"""
from __future__ import annotations

import os
import tempfile

from .config import ConfigError


MANY_CLASSES = 100   # more classes than this and than a tenth of the samples: hint at regression


# -- the label task ------------------------------------------------------------
def model_kind(model_name, loss="cross_entropy") -> str:
    """What the model declares: regression (ridge; an mlp or torch model with
    model.loss = mse), binary (one logit) or classification."""
    from .models import MODELS
    if model_name == "torch":
        return "regression" if loss == "mse" else "classification"
    cls = MODELS[model_name]
    if cls.task == "regression" or loss == "mse":
        return "regression"
    return "binary" if getattr(cls, "binary", False) else "classification"


def resolve_task(cfg) -> tuple:
    """(task, reason): the run's label task from data.task and the model.

    auto: a regression model makes the task regression; any other model
    makes it classification (binary for a one-logit model), and the data
    must then hold integer labels. An explicit data.task must fit the model.
    """
    kind, asked, name = model_kind(cfg.model.name, cfg.model.loss), cfg.data.task, cfg.model.name
    if asked == "regression" and kind != "regression":
        raise ConfigError(f"data.task = regression needs a regression model (model.name = ridge, "
                          f"or mlp/torch with model.loss = mse); model.name = {name} is a classifier")
    if asked in ("classification", "binary") and kind == "regression":
        raise ConfigError(f"data.task = {asked} needs a classifier (logreg, softmax, mlp, cnn); "
                          f"model.name = {name} is a regression model: set data.task = regression")
    how = "data.task = auto" if asked == "auto" else f"data.task = {asked}"
    what = {"regression": "a regression model", "binary": "a binary classifier",
            "classification": "a classifier"}[kind]
    return kind, f"{how}, model {name} is {what}"


def describe_task(task, reason, data) -> str:
    """Rank 0's line saying what was decided."""
    if task == "regression":
        return f"mpidsgd: task regression ({reason})"
    n = 2 if task == "binary" else data.n_outputs
    labels = f", labels {_labels_text(data.classes)}" if data.classes is not None else ""
    many = n > MANY_CLASSES and n * 10 > data.n_train
    hint = "; so many classes look like regression targets: use model.name = ridge" if many else ""
    return f"mpidsgd: task {task}, {n} classes{labels} ({reason}{hint})"


def _labels_text(classes) -> str:
    shown = ", ".join(f"{c:g}" for c in classes[:4])
    return f"{shown}, ..., {classes[-1]:g}" if len(classes) > 5 else ", ".join(f"{c:g}" for c in classes)


# -- device, output folder -------------------------------------------------------
def check_device(cfg):
    """run.device = cuda needs CuPy and a visible GPU."""
    if cfg.run.device != "cuda":
        return
    try:
        import cupy
    except ImportError:
        raise ConfigError("run.device = cuda needs CuPy, which is not installed: "
                          "pip install -e \".[gpu]\" (CUDA 12) or \".[gpu-cuda13]\" (CUDA 13)") from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:      # CUDA runtime or driver errors of any kind
        raise ConfigError(f"run.device = cuda but CUDA cannot list GPUs ({type(exc).__name__})") from None
    if n == 0:
        raise ConfigError("run.device = cuda but no GPU is visible")


def check_cuda_aware(cfg, support=None) -> list:
    """comm.cuda_aware = true with run.device = cuda needs an MPI that reads
    device buffers (comm/cuda_aware.py): refused where the library says it
    does not; a note where it cannot tell. (On the CPU there are no device
    buffers and the key changes nothing.) `support` replaces the query (tests)."""
    if not (cfg.comm.cuda_aware and cfg.run.device == "cuda"):
        return []
    from .comm.cuda_aware import cuda_support, refusal
    ok, why = cuda_support() if support is None else support
    if ok is False:
        raise ConfigError(refusal(why))
    if ok is None:
        return [f"comm.cuda_aware = true: cannot tell whether MPI is CUDA-aware ({why}); trusting it"]
    return []


def check_writable_dir(path, key):
    """Prove that `path` can be created and written, leaving nothing behind:
    a probe file in `path`, or in its nearest existing ancestor."""
    target = os.path.abspath(path)
    while not os.path.exists(target):
        target = os.path.dirname(target)
    if not os.path.isdir(target):
        where = "is a file" if target == os.path.abspath(path) else f"is under the file {target}"
        raise ConfigError(f"{key} {path} {where}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as exc:
        raise ConfigError(f"{key} {path} is not writable ({target}: "
                          f"{exc.strerror or type(exc).__name__})") from None


# -- memory ------------------------------------------------------------------------
def available_bytes():
    """MemAvailable of this node, or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_model_memory(cfg, n_params, itemsize, local_ranks, avail=None):
    """A model whose parameters and gradient alone exceed this node's free
    memory (over the node's ranks) is refused before anything is allocated."""
    avail = available_bytes() if avail is None else avail
    need = 2 * n_params * itemsize * local_ranks
    if cfg.run.device == "cpu" and avail is not None and need > avail:
        keys = {"mlp": "model.hidden", "cnn": "model.channels"}.get(cfg.model.name, "model.name")
        raise ConfigError(f"{keys}: model {cfg.model.name} has {n_params:,} parameters; parameters "
                          f"and gradient need {_gb(need)} on this node ({local_ranks} rank(s)), "
                          f"{_gb(avail)} is available")


def _gb(n) -> str:
    return f"{n / 1e9:.1f} GB ({n:,} bytes)"
