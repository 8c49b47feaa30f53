"""The bench package's command line: every subcommand is registered, and the
report scripts (`vr-rates`, `async-iters`) compute their tables from
`bench train` / `tune momentum` outputs."""
import json
import subprocess
import sys

from mpidsgd.bench import main
from mpidsgd.bench.cli import SUBCOMMANDS


def test_every_subcommand_is_offered():
    out = subprocess.run([sys.executable, "-m", "mpidsgd.bench", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = out.stdout.split("positional arguments:")[1]
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in listed, name


def test_vr_rates_counts_evaluations_over_all_ranks(tmp_path, capsys):
    # N = 400 / 2 = 200 samples; rank 0's samples x 2 ranks / N = evaluations per sample
    summary = {"world_size": 2, "samples_processed": 400, "grad_evals_per_sample": 2,
               "final_rel_grad_norm": 1e-11,
               "rel_grad_norm_history": [[1, 100, 1e-3], [2, 200, 1e-7], [3, 300, 1e-11]]}
    path = tmp_path / "rates.json"
    path.write_text(json.dumps([{"run": "svrg lr=0.1", "summary": summary}]))
    assert main(["vr-rates", str(path)]) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert row == "| 2 | svrg lr=0.1 | 2.0 (2) | 3.0 (3) | 1e-11 |"


def _run(tmp_path, name, groups, momentum, lr, losses):
    out = tmp_path / name
    out.mkdir()
    recs = [{"kind": "train", "step": 10 * (i + 1), "loss": x} for i, x in enumerate(losses)]
    recs.insert(1, {"kind": "eval", "step": 10, "train_loss": 0.0})     # not a train record
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {"status": "ok", "groups": groups, "momentum": momentum, "lr": lr,
            "train_loss": losses[-1], "out_dir": str(out), "steps": 100}


def test_async_iters_reads_the_windowed_loss(tmp_path, capsys):
    runs = [_run(tmp_path, "a", 1, 0.5, 0.1, [3, 2, 1, 0.5]),      # window mean 1.5 at step 30
            _run(tmp_path, "b", 1, 0.9, 0.05, [3, 3, 3, 3]),        # never
            _run(tmp_path, "c", 2, 0.0, 0.2, [3, 3, 2, 1, 1]),      # 1.5 at step 40
            _run(tmp_path, "d", 2, 0.9, 0.1, [2, 1, 1, 1])]         # 1.5 at step 20
    table = [{"groups": 1, "best_momentum": 0.5, "best_lr": 0.1},
             {"groups": 2, "best_momentum": 0.0, "best_lr": 0.2}]
    path = tmp_path / "tune.json"
    path.write_text(json.dumps({"runs": runs, "table": table}))
    assert main(["async-iters", str(path), "--target", "1.6", "--window", "2"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == ["| 1 | +0.5, 0.1 | 30 | 1.0x | 0.05 | >100 | >3.3x |",
                    "| 2 | +0, 0.2 | 40 | 1.3x | 0.1 | 20 | 0.7x |"]
