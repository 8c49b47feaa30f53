"""The example of docs/adding-an-algorithm.md is real: its code block is
executed here, trained through train.setup/run, and checked against a
hand-written loop of the same update rule."""
import re
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI

from mpidsgd import train
from mpidsgd.algorithms import REGISTRY
from mpidsgd.topology import Topology

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding-an-algorithm.md"
SETS = {"algo.name": '"signsgd"', "algo.lr": 0.01, "algo.momentum": 0.0, "algo.scale": 0.5,
        "algo.schedule": '"constant"', "run.steps": 20, "run.eval_every": 0,
        "run.dtype": '"float64"', "data.n_samples": 512, "data.n_test": 64,
        "model.hidden": "[16]"}


def example_code() -> str:
    text = PAGE.read_text()
    m = re.search(r"<!-- example:algorithm -->\n```python\n(.*?)```", text, flags=re.S)
    assert m, "docs/adding-an-algorithm.md lost its example block"
    return m.group(1)


@pytest.fixture
def signsgd():
    """Register the page's algorithm for one test, then take it out again
    (registry-wide tests in this process must not see it)."""
    namespace = {}
    exec(compile(example_code(), str(PAGE), "exec"), namespace)
    yield REGISTRY["signsgd"]
    REGISTRY.pop("signsgd")


def args_for(tmp_path, **extra):
    items = {**SETS, "run.out_dir": f'"{tmp_path}"', **extra}
    return train.parse_args([x for k, v in items.items() for x in ("--set", f"{k}={v}")])


def test_example_is_short(signsgd):
    assert len(example_code().strip().splitlines()) <= 40


def test_example_trains_through_the_entry_point_and_matches_its_rule(signsgd, tmp_path):
    topo = Topology(MPI.COMM_SELF)
    cfg, ctx = train.setup(args_for(tmp_path), topo)
    algo, shard = ctx["algo"], ctx["data"].train
    assert isinstance(algo, signsgd)
    # the rule by hand from the same start and the same batches
    x0 = algo.params.copy()
    x = x0.copy()
    twin = shard.__class__(shard.X, shard.y, shard.ids, shard.batch_size, shard.steps_per_epoch,
                           seed=cfg.run.seed, rank=0, backend=algo.backend)
    g = np.zeros_like(x)
    for _ in range(20):
        X, y, _ = twin.next_batch()
        algo.model.loss_grad(x, X, y, g)
        x -= 0.01 * 0.5 * np.sign(np.sign(g))
    summary = train.run(cfg, ctx, topo, args_for(tmp_path))
    assert summary["algorithm"] == "signsgd" and summary["steps"] == 20
    assert np.array_equal(algo.params, x)
    assert not np.array_equal(x, x0)                 # the rule moved the parameters


def test_example_options_refuse_bad_values_with_one_line(signsgd, tmp_path, capsys):
    topo = Topology(MPI.COMM_SELF)
    with pytest.raises(SystemExit) as exc:
        train.setup(args_for(tmp_path, **{"algo.scale": -1.0}), topo)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mpidsgd: error: algo.scale must be > 0, got -1.0"]
    with pytest.raises(SystemExit) as exc:                       # a world-size rule
        train.setup(args_for(tmp_path, **{"algo.max_ranks": 0}), topo)
    assert exc.value.code == 2
    assert "algo.max_ranks = 0 < world size 1" in capsys.readouterr().err
