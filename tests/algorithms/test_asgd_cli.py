"""asgd / easgd bad input through the CLI: one line `mpidsgd: error: ...`
naming the key, exit code 2, on every rank (mpiexec under a timeout)."""
import pytest

from cli_launch import TINY, launch

BAD_SERIAL = [
    (["--set", "algo.name=asgd"], "needs at least 2 ranks (rank 0 is the parameter server)"),
    (["--set", "algo.name=easgd"], "needs at least 2 ranks"),
    (["--set", "algo.name=sgd", "--set", 'algo.momentum="auto"'],
     'algo.momentum = "auto" is an asgd option, not sgd\'s'),
    (["--set", "algo.name=easgd", "--set", 'algo.momentum="auto"'], "asgd option, not easgd's"),
    (["--set", "algo.name=asgd", "--set", 'algo.momentum="fast"'], "algo.momentum must be a number"),
    (["--set", "algo.name=asgd", "--set", "algo.momentum_target=1.5"], "algo.momentum_target"),
    (["--set", "algo.name=asgd", "--set", "algo.nesterov=true"], "algo.nesterov"),
    (["--set", "algo.name=asgd", "--set", 'algo.optimizer="adamw"'], "algo.optimizer"),
    (["--set", "algo.name=asgd", "--set", "algo.groups=-1"], "algo.groups must be >= 0"),
    (["--set", "algo.name=easgd", "--set", "algo.elastic_beta=0"], "algo.elastic_beta"),
    (["--set", "algo.name=easgd", "--set", "algo.H=0"], "algo.H must be >= 1"),
]


@pytest.mark.parametrize("args,words", BAD_SERIAL)
def test_bad_input_is_one_line_and_exit_2(args, words):
    r = launch(TINY + args, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("mpidsgd: error: ") and words in lines[0], lines[0]


def test_groups_must_divide_the_workers():
    r = launch(TINY + ["--set", "algo.name=asgd", "--set", "algo.groups=2"], n=4, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "algo.groups = 2 must divide the 3 worker ranks" in lines[0], lines[0]
    assert not r.stdout.strip()
