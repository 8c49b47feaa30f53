"""python -m mpidsgd.tune momentum: grid, selection and skip logic with an
injected runner (no MPI), outputs, and bad input."""
import json

import pytest

from mpidsgd import tune

GRID = ["--groups", "1,2,4", "--momentum", "-0.3,0,0.3,0.6", "--lr", "0.01,0.1"]


def fake_loss(M, mu, lr):
    # a made-up landscape whose best mu_L falls with M: 0.6, 0.3, 0 (lr 0.1)
    target = {1: 0.6, 2: 0.3, 4: 0.0}[M]
    return 0.1 + (mu - target) ** 2 + abs(lr - 0.1)


class FakeRunner:
    """Summaries from fake_loss; chosen specs crash or diverge."""

    def __init__(self, crash=(), nan=()):
        self.crash, self.nan, self.seen = set(crash), set(nan), []

    def __call__(self, spec):
        self.seen.append(spec)
        key = (spec.groups, spec.momentum, spec.lr)
        if key in self.crash:
            raise RuntimeError("run failed (1): mpiexec ...\nTraceback ...")
        loss = float("nan") if key in self.nan else fake_loss(*key)
        return {"final_train_loss": loss, "implicit_momentum": 1 - 1 / spec.groups + 0.01,
                "p_tau0": 1 / spec.groups, "steps": spec.steps, "wall_time_s": 1.0}


def _main(tmp_path, runner, extra=()):
    lines = []
    argv = ["momentum", *GRID, "--budget-samples", "3200", "--out", str(tmp_path / "runs"),
            "--json", str(tmp_path / "t.json"), "--plot", str(tmp_path / "t.png"), *extra]
    rc = tune.main(argv, runner=runner, say=lines.append)
    return rc, lines


@pytest.fixture(scope="module")
def grid_with_failures(tmp_path_factory):
    """The full grid with an injected runner: the true optimum of M = 2
    crashes and that of M = 4 diverges. (rc, lines, runner, json, folder)."""
    tmp_path = tmp_path_factory.mktemp("tune")
    runner = FakeRunner(crash=[(2, 0.3, 0.1)], nan=[(4, 0.0, 0.1)])
    rc, lines = _main(tmp_path, runner)
    out = json.loads((tmp_path / "t.json").read_text()) if rc == 0 else None
    return rc, lines, runner, out, tmp_path


def test_every_grid_point_runs_once_with_a_progress_line(grid_with_failures):
    rc, lines, runner, _, _ = grid_with_failures
    assert rc == 0
    assert len(runner.seen) == 3 * 4 * 2
    assert len([ln for ln in lines if ln.startswith("[")]) == 24


def test_crashed_and_diverged_runs_are_reported_failed(grid_with_failures):
    _, lines, _, out, _ = grid_with_failures
    progress = [ln for ln in lines if ln.startswith("[")]
    assert sum("FAILED" in ln for ln in progress) == 2
    assert any("groups 2  mu_L +0.3  lr 0.1  FAILED (RuntimeError: run failed (1)" in ln
               for ln in progress)
    failed = [r for r in out["runs"] if r["status"] == "failed"]
    assert {(r["groups"], r["momentum"]) for r in failed} == {(2, 0.3), (4, 0.0)}


def test_best_is_the_lowest_loss_among_the_runs_that_did_not_fail(grid_with_failures):
    out = grid_with_failures[3]
    best = {r["groups"]: (r["best_momentum"], r["best_lr"], r["ok"]) for r in out["table"]}
    assert best[1] == (0.6, 0.1, 8)
    assert best[2][1] == 0.1 and best[2][0] in (0.0, 0.6) and best[2][2] == 7
    assert best[4] == (-0.3, 0.1, 7)


def test_implicit_momentum_is_the_mean_over_the_successful_runs(grid_with_failures):
    out = grid_with_failures[3]
    assert out["table"][2]["implicit_momentum"] == pytest.approx(0.76)


def test_the_plot_is_written(grid_with_failures):
    assert (grid_with_failures[4] / "t.png").stat().st_size > 1000


def test_plan_world_size_steps_and_emulation(tmp_path):
    runner = FakeRunner()
    rc, _ = _main(tmp_path, runner, ["--ranks-per-group", "2", "--compute-s", "0.01"])
    assert rc == 0
    spec = runner.seen[-1]
    # quickstart batch 32 per rank, 2 ranks per group: 3200 / 64 = 50 updates
    assert (spec.groups, spec.nprocs, spec.steps) == (4, 9, 50)
    for o in ["algo.name='asgd'", "algo.groups=4", "algo.momentum=0.6", "algo.lr=0.1",
              "run.steps=50", "comm.emulate.compute='exponential_total'",
              "comm.emulate.compute_s=0.01"]:
        assert o in spec.overrides


def test_all_failed_is_exit_1(tmp_path):
    keys = [(M, mu, lr) for M in (1, 2, 4) for mu in (-0.3, 0.0, 0.3, 0.6) for lr in (0.01, 0.1)]
    rc, lines = _main(tmp_path, FakeRunner(crash=keys))
    assert rc == 1 and sum("FAILED" in ln for ln in lines) == 24


@pytest.mark.parametrize("bad, key", [
    (["--groups", "0,2"], "--groups"),
    (["--lr", "0.1,x"], "--lr"),
    (["--config", "nope.toml"], "nope.toml"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, bad, key):
    runner = FakeRunner()
    rc, _ = _main(tmp_path, runner, bad)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("mpidsgd: error:") and key in err[0]
    assert runner.seen == []


@pytest.fixture(scope="module")
def real_grid(tmp_path_factory):
    """Two real asgd jobs of 2 groups (3 ranks) and one that mpidsgd.train
    refuses (momentum 1.5: exit 2), once for the module: (rc, lines, json)."""
    tmp_path = tmp_path_factory.mktemp("tune-real")
    lines = []
    argv = ["momentum", "--groups", "2", "--momentum", "-0.3,0.5,1.5", "--lr", "0.05",
            "--budget-samples", "640", "--compute-s", "0.005", "--out", str(tmp_path / "runs"),
            "--json", str(tmp_path / "t.json"), "--timeout", "120",
            "--set", "data.n_samples=2048", "--set", "data.n_test=64",
            "--set", "data.n_features=8", "--set", "model.hidden=[8]",
            "--set", "data.batch_size=16"]
    rc = tune.main(argv, say=lines.append)
    out = json.loads((tmp_path / "t.json").read_text()) if rc == 0 else None
    return rc, lines, out


def ok_runs(real_grid):
    rc, _, out = real_grid
    assert rc == 0
    return [r for r in out["runs"] if r["status"] == "ok"]


def test_real_grid_runs_the_valid_jobs_for_the_budget(real_grid):
    ok = ok_runs(real_grid)
    assert {(r["momentum"], r["lr"]) for r in ok} == {(-0.3, 0.05), (0.5, 0.05)}
    assert all(r["steps"] == 40 for r in ok)        # 640 samples / batch 16


def test_real_grid_reports_the_refused_job_failed_with_exit_2(real_grid):
    failed = [ln for ln in real_grid[1] if "FAILED" in ln]
    assert len(failed) == 1 and "mu_L +1.5" in failed[0] and "(2)" in failed[0]


def test_real_grid_table_holds_the_better_of_the_two_others(real_grid):
    ok = ok_runs(real_grid)
    row = real_grid[2]["table"][0]
    best = min(ok, key=lambda r: r["train_loss"])
    assert (row["best_momentum"], row["best_lr"]) == (best["momentum"], best["lr"])


def test_real_grid_implicit_momentum_is_a_fraction(real_grid):
    ok_runs(real_grid)
    assert 0 <= real_grid[2]["table"][0]["implicit_momentum"] <= 1
