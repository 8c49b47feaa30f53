"""Iterations to a target training loss from a tuner run's folders.

    python -m mpidsgd.bench async-iters runs/tune_qs.json --target 0.9

For each group count: the tuner's best (mu_L, lr) and the best lr at
mu_L = 0.9, the first server update at which the training loss (the mean
over the last `--window` records of metrics.jsonl, 10 updates each by
default) is at or below the target, and the penalty against the tuned
single-group run. Prints a Markdown table.
"""
import json
from pathlib import Path


def first_hit(out_dir, target, window):
    recs = [json.loads(x) for x in Path(out_dir, "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r.get("kind") == "train"]
    for i in range(len(train)):
        w = train[max(0, i - window + 1):i + 1]
        if len(w) == window and sum(r["loss"] for r in w) / window <= target:
            return train[i]["step"]
    return None


def register(sub):
    p = sub.add_parser("async-iters", help="iterations to a target training loss, from a "
                                           "`tune momentum --json` file", description=__doc__)
    p.add_argument("json")
    p.add_argument("--target", type=float, required=True)
    p.add_argument("--window", type=int, default=3)
    p.set_defaults(func=run)


def run(a):
    """The Markdown table of the tuner's runs (module docstring)."""
    res = json.loads(Path(a.json).read_text())
    ok = [r for r in res["runs"] if r["status"] == "ok"]
    rows, base = [], None
    for row in res["table"]:
        M = row["groups"]
        tuned = next(r for r in ok if r["groups"] == M and r["momentum"] == row["best_momentum"]
                     and r["lr"] == row["best_lr"])
        m9 = min((r for r in ok if r["groups"] == M and r["momentum"] == 0.9),
                 key=lambda r: r["train_loss"], default=None)
        it_t = first_hit(tuned["out_dir"], a.target, a.window)
        it_9 = first_hit(m9["out_dir"], a.target, a.window) if m9 else None
        base = base or it_t
        rows.append((M, tuned, it_t, m9, it_9))
    steps = ok[0]["steps"]

    def f(it):
        return f">{steps}" if it is None else str(it)

    def pen(it):
        if base is None:
            return "-"
        return f">{steps / base:.1f}x" if it is None else f"{it / base:.1f}x"
    print(f"| M | tuned mu_L, lr | updates to loss {a.target} | penalty | "
          f"mu_L = 0.9: lr | updates | penalty |")
    print("|---|---|---|---|---|---|---|")
    for M, t, it_t, m9, it_9 in rows:
        print(f"| {M} | {t['momentum']:+g}, {t['lr']:g} | {f(it_t)} | {pen(it_t)} | "
              f"{m9['lr'] if m9 else '-'} | {f(it_9)} | {pen(it_9)} |")
