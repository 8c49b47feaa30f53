"""`python -m mpidsgd.plot`: learning curves from the metrics.jsonl of real
runs; the series drawn are the records' values, one line per run."""
import json
import os
import subprocess
import sys

import pytest

from mpidsgd import plot

TINY = ["--set", "data.n_samples=512", "--set", "data.n_test=64", "--set", "data.n_features=8",
        "--set", "model.hidden=[8]", "--set", "run.steps=8", "--set", "run.eval_every=4",
        "--set", "run.log_every=2", "--set", "data.batch_size=16"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = subprocess.run([sys.executable, "-m", "mpidsgd.train", *TINY, "--set", "algo.name=sgd",
                          "--set", f'run.out_dir="{out}"'], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


def records(run_dir, *kinds):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] in kinds]


def test_a_run_is_labelled_by_its_algorithm_and_metric(run_dir):
    run = plot.load_run(str(run_dir))
    assert run["label"] == "sgd" and run["metric"] == "test_accuracy"


def test_test_series_is_the_eval_records_accuracy(run_dir):
    xs, ys = plot.load_run(str(run_dir))["test"]["samples"]
    evals = records(run_dir, "eval", "final")
    assert ys == [r["test_accuracy"] for r in evals] and len(ys) == 3      # steps 4, 8, final


def test_test_series_x_is_samples_processed(run_dir):
    xs, ys = plot.load_run(str(run_dir))["test"]["samples"]
    assert xs == [r["step"] * 16 for r in records(run_dir, "eval", "final")]  # 1 rank, batch 16


def test_train_series_is_the_train_records_loss_over_time(run_dir):
    trains = records(run_dir, "train")
    run = plot.load_run(str(run_dir))
    assert run["train"]["time_s"] == ([r["time_s"] for r in trains], [r["loss"] for r in trains])


def test_one_rank_sends_no_megabytes(run_dir):
    assert plot.load_run(str(run_dir))["train"]["mb"][0] == [0.0] * 4


def regression_run(folder):
    """A regression run's folder, as rank 0 writes it (kept minimal)."""
    reg = folder / "reg"
    reg.mkdir()
    lines = [{"kind": "train", "step": 2, "loss": 3.0, "time_s": 0.1, "bytes_train": 2e6, "samples": 64},
             {"kind": "final", "step": 2, "train_loss": 3.0, "time_s": 0.2, "bytes_train": 4e6,
              "samples": 64, "test_loss": 1.0, "test_mse": 2.0}]
    (reg / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (reg / "summary.json").write_text(json.dumps({"algorithm": "spardl", "world_size": 2}))
    return reg


def test_cli_writes_one_image_for_several_runs(run_dir, tmp_path):
    reg = regression_run(tmp_path)
    png = tmp_path / "curves.png"
    res = subprocess.run([sys.executable, "-m", "mpidsgd.plot", str(run_dir), str(reg), "-o", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10000


def test_a_regression_run_plots_test_mse_over_megabytes(tmp_path):
    assert plot.load_run(str(regression_run(tmp_path)))["test"]["mb"] == ([4.0], [2.0])


def test_a_folder_without_metrics_is_one_line_exit_2(tmp_path):
    png = tmp_path / "curves.png"
    res = subprocess.run([sys.executable, "-m", "mpidsgd.plot", str(tmp_path / "none"), "-o", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("mpidsgd: error: ") \
        and res.stderr.count("\n") == 1 and "metrics.jsonl" in res.stderr
