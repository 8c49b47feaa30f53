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


def test_series_are_the_records_values(run_dir):
    recs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run = plot.load_run(str(run_dir))
    assert run["label"] == "sgd" and run["metric"] == "test_accuracy"
    evals = [r for r in recs if r["kind"] in ("eval", "final")]
    xs, ys = run["test"]["samples"]
    assert ys == [r["test_accuracy"] for r in evals] and len(ys) == 3      # steps 4, 8, final
    assert xs == [r["step"] * 16 for r in evals]                         # 1 rank, batch 16
    trains = [r for r in recs if r["kind"] == "train"]
    assert run["train"]["time_s"] == ([r["time_s"] for r in trains], [r["loss"] for r in trains])
    assert run["train"]["mb"][0] == [0.0] * 4                            # one rank sends nothing


def test_cli_writes_one_image_for_several_runs(run_dir, tmp_path):
    # a regression run beside it, as rank 0 writes them (kept minimal)
    reg = tmp_path / "reg"
    reg.mkdir()
    lines = [{"kind": "train", "step": 2, "loss": 3.0, "time_s": 0.1, "bytes_train": 2e6, "samples": 64},
             {"kind": "final", "step": 2, "train_loss": 3.0, "time_s": 0.2, "bytes_train": 4e6,
              "samples": 64, "test_loss": 1.0, "test_mse": 2.0}]
    (reg / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (reg / "summary.json").write_text(json.dumps({"algorithm": "spardl", "world_size": 2}))
    png = tmp_path / "curves.png"
    res = subprocess.run([sys.executable, "-m", "mpidsgd.plot", str(run_dir), str(reg), "-o", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10000
    assert plot.load_run(str(reg))["test"]["mb"] == ([4.0], [2.0])
    # a folder without metrics is one line, exit 2
    res = subprocess.run([sys.executable, "-m", "mpidsgd.plot", str(tmp_path / "none"), "-o", str(png)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("mpidsgd: error: ") \
        and res.stderr.count("\n") == 1 and "metrics.jsonl" in res.stderr
