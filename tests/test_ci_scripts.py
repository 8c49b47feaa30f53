"""The CI scripts name files that only a GPU (or a cluster) run would open:
a CPU run must notice when a move leaves such a name behind."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _named_paths(script):
    """Repository paths (tests/..., jobs/..., slurm/...) a script mentions."""
    text = (ROOT / script).read_text()
    return sorted(set(re.findall(r"\b((?:tests|jobs|slurm|docs)/[\w./-]+\.\w+)", text)))


def test_ci_gpu_names_existing_files():
    paths = _named_paths(".ci/gpu")
    assert "tests/gpu/test_gpu.py" in paths      # the parser sees the test list
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f".ci/gpu names files that do not exist: {missing}"


def test_ci_run_names_existing_files():
    paths = _named_paths(".ci/run")
    assert "tests/models/test_torch.py" in paths  # the torch step's test list
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f".ci/run names files that do not exist: {missing}"
