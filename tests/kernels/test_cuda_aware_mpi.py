"""Detection of CUDA-aware MPI (mpidsgd/comm/cuda_aware.py) and what train
and `bench collectives` do with `comm.cuda_aware = true` / `--cuda-aware`
on a library without it: one error line, exit 2 (compare: staged only)."""
from types import SimpleNamespace

import pytest

from mpidsgd.comm import cuda_aware as CA
from mpidsgd.config import ConfigError


def _fn(answer):
    return lambda: (lambda: answer)


def test_library_answer_decides():
    assert CA.cuda_support(find=_fn(1), env={})[0] is True
    ok, why = CA.cuda_support(find=_fn(0), env={})
    assert ok is False and why.endswith("MPIX_Query_cuda_support() = 0")
    ok, why = CA.cuda_support(find=lambda: None, env={})
    assert ok is None and "has no MPIX_Query_cuda_support" in why
    assert CA.library_name() in why


def test_mpich_gpu_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(CA, "library_name", lambda: "MPICH Version: 5.0.2")
    ok, why = CA.cuda_support(find=_fn(1), env={"MPIR_CVAR_ENABLE_GPU": "0"})
    assert ok is False and "MPIR_CVAR_ENABLE_GPU=0" in why
    assert CA.cuda_support(find=_fn(1), env={"MPIR_CVAR_ENABLE_GPU": "1"})[0] is True
    monkeypatch.setattr(CA, "library_name", lambda: "Open MPI v5.0.5")
    assert CA.cuda_support(find=_fn(1), env={"MPIR_CVAR_ENABLE_GPU": "0"})[0] is True


def test_the_installed_library_is_asked():
    # whatever this machine's MPI says, the answer names the library and evidence
    ok, why = CA.cuda_support()
    assert ok in (True, False, None) and why.startswith(CA.library_name())
    if CA._query_symbol() is not None:
        assert "MPIX_Query_cuda_support() = " in why or "MPIR_CVAR_ENABLE_GPU" in why


def _cfg(device, aware):
    return SimpleNamespace(run=SimpleNamespace(device=device),
                           comm=SimpleNamespace(cuda_aware=aware))


def test_start_up_check():
    from mpidsgd.startup import check_cuda_aware
    no = (False, "MPICH Version: 5.0.2, MPIX_Query_cuda_support() = 0")
    with pytest.raises(ConfigError, match=r"^comm.cuda_aware = true but this MPI is not "
                                          r"CUDA-aware \(MPICH.*= 0\); set comm.cuda_aware = false"):
        check_cuda_aware(_cfg("cuda", True), support=no)
    assert check_cuda_aware(_cfg("cuda", True), support=(True, "x")) == []
    assert "cannot tell" in check_cuda_aware(_cfg("cuda", True), support=(None, "x"))[0]
    # no device buffers, nothing to check
    assert check_cuda_aware(_cfg("cpu", True), support=no) == []
    assert check_cuda_aware(_cfg("cuda", False), support=no) == []


def test_train_refuses_with_one_line_exit_2(monkeypatch, tmp_path, capsys):
    from mpidsgd import startup, train
    from mpidsgd.topology import Topology
    monkeypatch.setattr(startup, "check_device", lambda cfg: None)    # as if a GPU were there
    monkeypatch.setattr(CA, "cuda_support", lambda: (False, "Fake MPI 1.0, MPIX_Query_cuda_support() = 0"))
    args = train.parse_args(["--set", "run.device=\"cuda\"", "--set", "comm.cuda_aware=true",
                             "--set", f"run.out_dir=\"{tmp_path}\""])
    with pytest.raises(SystemExit) as exc:
        train.setup(args, Topology())
    assert exc.value.code == 2
    out = capsys.readouterr()
    lines = [ln for ln in (out.out + out.err).splitlines() if ln.strip()]
    assert lines == ["mpidsgd: error: comm.cuda_aware = true but this MPI is not CUDA-aware "
                     "(Fake MPI 1.0, MPIX_Query_cuda_support() = 0); set comm.cuda_aware = false "
                     "to stage device buffers through pinned host memory"]


@pytest.mark.parametrize("mode, support, expect", [
    ("off", (False, "x"), [False]), ("on", (True, "x"), [True]), ("on", (False, "x"), None),
    ("compare", (True, "x"), [False, True]), ("compare", (False, "x"), [False]),
    ("compare", (None, "x"), [False, True])])
def test_bench_modes(monkeypatch, capsys, mode, support, expect):
    from mpidsgd.bench import collectives
    monkeypatch.setattr(CA, "cuda_support", lambda: support)
    args = SimpleNamespace(device="cuda", cuda_aware_mode=mode)
    assert collectives._mpi_modes(args, True) == expect
    out = capsys.readouterr().out
    assert ("mpidsgd: error: --cuda-aware: comm.cuda_aware = true" in out) == (expect is None)
    # on the CPU the flag changes nothing
    assert collectives._mpi_modes(SimpleNamespace(device="cpu", cuda_aware_mode=mode), True) == [False]
