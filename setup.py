"""Install mpidsgd; the top-level kernels/ folder becomes mpidsgd.kernels."""
import re
from pathlib import Path

from setuptools import setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"',
                    (here / "mpidsgd" / "__init__.py").read_text()).group(1)

packages = ["mpidsgd", "mpidsgd.comm", "mpidsgd.algorithms", "mpidsgd.models",
            "mpidsgd.checkpoint",
            "mpidsgd.data", "mpidsgd.bench", "mpidsgd.kernels",
            "mpidsgd.kernels.cpu", "mpidsgd.kernels.cuda"]

setup(
    name="mpidsgd",
    version=version,
    description="MPI-native communication-efficient data-parallel SGD "
                "(SparDL, gossip, local SGD, variance reduction)",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=packages,
    # kernels/ lives at the top level of the repository but is imported as
    # mpidsgd.kernels: the mapping below makes both installs agree.
    package_dir={"mpidsgd": "mpidsgd", "mpidsgd.kernels": "kernels"},
    install_requires=["numpy>=1.23", "mpi4py>=4", "h5py>=3.8", "numba>=0.58",
                      "tomli>=1.1; python_version<'3.11'"],
    extras_require={
        "mpich": ["mpich"],
        "openmpi": ["openmpi"],
        # CuPy and the Numba CUDA target (numba-cuda) for a CUDA 12 or 13 driver
        # (CuPy 13 and later: ndarray.get(blocking=False), the staged copies' overlap)
        "gpu": ["cupy-cuda12x>=13", "numba-cuda[cu12]"],
        "gpu-cuda13": ["cupy-cuda13x>=13", "numba-cuda[cu13]"],
        "plot": ["matplotlib"],
        # the documentation site: mkdocs build --strict (mkdocs.yml)
        "docs": ["mkdocs>=1.6", "pymdown-extensions>=10"],
        # PyTorch models (model.name = "torch"): unpinned, so a CUDA user keeps their own build
        "torch": ["torch"],
        "test": ["pytest>=7", "mpi-pytest>=2025.0", "pytest-timeout", "matplotlib", "hypothesis>=6"],
    },
    entry_points={"console_scripts": ["mpidsgd-train=mpidsgd.train:main"]},
)
