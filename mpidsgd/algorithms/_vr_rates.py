"""`python -m mpidsgd.algorithms._vr_rates runs/bench/x.json ...`: gradient
evaluations per sample to a relative gradient norm of 1e-6 / 1e-10 for the
variance-reduced runs of a `bench train --json` file (jobs/bench/centralvr_rates.toml)."""
from __future__ import annotations


def rates_table(records, targets=(1e-6, 1e-10)) -> str:
    """Markdown table from `bench train --json` records of VR runs: gradient
    evaluations per sample (and epochs) until the relative full-gradient norm
    first falls to each target, read from summary.json's rel_grad_norm_history."""
    head = " | ".join(f"evals (epochs) to {t:g}" for t in targets)
    lines = [f"| P | run | {head} | final rel. norm |", "|---" * (3 + len(targets)) + "|"]
    for r in records:
        s = r["summary"]
        hist = s.get("rel_grad_norm_history") or []
        N = s["samples_processed"] / s["grad_evals_per_sample"]
        cells = []
        for t in targets:
            hit = next(((e, smp) for e, smp, rel in hist if rel <= t), None)
            if hit is None:
                cells.append("-")
                continue
            # rank 0's samples x ranks / N (equal shards, e.g. data.samples_per_rank)
            evals = hit[1] * s["world_size"] / N
            cells.append(f"{evals:.1f} ({hit[0]})")
        lines.append(f"| {s['world_size']} | {r['run']} | {' | '.join(cells)} | {s['final_rel_grad_norm']:.2g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    for path in sys.argv[1:]:
        with open(path) as fh:
            print(rates_table(json.load(fh)))
