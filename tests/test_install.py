"""The README's two set-up commands, verbatim, from a copy of the clone root,
each in a fresh virtual environment; and a plain non-editable install that
imports mpidsgd.kernels from another folder.

The main command runs the built-in quickstart under `mpiexec -n 4`; its
summary is also the check that the quickstart lands in its accuracy band
(dense `sgd`: 85-95 % test accuracy, issue 2).

The test command would run this very suite again inside itself, so it runs
verbatim with PYTEST_ADDOPTS naming one small test file: the command line
is the README's, only its scope is narrowed (CI runs it in full).
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SGD_BAND = (0.85, 0.95)
pytestmark = pytest.mark.slow


def readme_command(tag):
    text = open(os.path.join(ROOT, "README.md")).read()
    m = re.search(rf"<!-- ci:{tag} -->\s*```bash\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no command block after <!-- ci:{tag} -->"
    return m.group(1).strip()


def clean_env(**extra):
    """The caller's environment minus anything that ties a child to this
    test run: the active virtual environment and mpi-pytest's markers."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("_PYTEST", "PYTEST_", "VIRTUAL_ENV", "PMI_", "MPI", "HYDRA"))}
    venv_bin = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if os.path.abspath(p) != os.path.abspath(venv_bin))
    env["MPIEXEC_TIMEOUT"] = "1200"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """The working tree as a user's clone would hold it (no venv, no runs)."""
    dst = tmp_path_factory.mktemp("clone") / "mpidsgd"
    shutil.copytree(ROOT, dst, ignore=shutil.ignore_patterns(
        ".venv", "runs", "__pycache__", "build", "*.egg-info", ".pytest_cache", ".git"))
    return dst


def bash(cmd, cwd, timeout, **env):
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=clean_env(**env),
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{cmd}\nexit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_readme_main_command_runs_quickstart_in_band(clone):
    cmd = readme_command("run")
    assert "mpiexec -n 4 python -m mpidsgd.train" in cmd and 'pip install -e ".[mpich]"' in cmd
    res = bash(cmd, clone, timeout=1800)
    assert "final" in res.stdout
    with open(clone / "runs" / "quickstart" / "summary.json") as fh:
        s = json.load(fh)
    assert s["world_size"] == 4
    acc = s["final_test_accuracy"]
    if s["algorithm"] == "sgd":
        assert SGD_BAND[0] <= acc <= SGD_BAND[1], acc
    else:
        # the default is a communication-efficient algorithm: it must stay in
        # the band too, and dense sgd is checked on the same task
        assert SGD_BAND[0] <= acc <= SGD_BAND[1], (s["algorithm"], acc)
        bash(". .venv/bin/activate && mpiexec -n 4 python -m mpidsgd.train "
             "--set 'algo.name=\"sgd\"' --set 'run.out_dir=\"runs/quickstart-sgd\"'",
             clone, timeout=1800)
        with open(clone / "runs" / "quickstart-sgd" / "summary.json") as fh:
            acc = json.load(fh)["final_test_accuracy"]
        assert SGD_BAND[0] <= acc <= SGD_BAND[1], ("sgd", acc)


def test_readme_test_command_installs_and_runs_pytest(clone):
    cmd = readme_command("test")
    assert cmd.startswith("python3 -m venv .venv") and cmd.endswith("python -m pytest")
    shutil.rmtree(clone / ".venv", ignore_errors=True)
    res = bash(cmd, clone, timeout=1800, PYTEST_ADDOPTS="tests/test_config.py -p no:cacheprovider")
    assert re.search(r"\d+ passed", res.stdout), res.stdout[-2000:]


def test_non_editable_install_imports_kernels_from_another_folder(clone, tmp_path):
    venv = tmp_path / "venv"
    bash(f"python3 -m venv {venv} && {venv}/bin/pip install -q '{clone}[mpich]'", tmp_path,
         timeout=1800)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = bash(f"{venv}/bin/python -c 'import mpidsgd.kernels as k, mpidsgd; "
               "print(k.__file__); print(mpidsgd.__file__); print(k.topk_abs)'",
               elsewhere, timeout=300)
    kfile, pfile = res.stdout.splitlines()[:2]
    # installed copies, not the clone's source folders
    assert "site-packages" in kfile and "site-packages" in pfile, res.stdout
    assert kfile.endswith(os.path.join("mpidsgd", "kernels", "__init__.py"))
