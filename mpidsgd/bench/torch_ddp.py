"""`python -m mpidsgd.bench torch`: PyTorch models on mpidsgd against PyTorch DDP.

For each model (the quickstart-shaped MLP and a small BatchNorm CNN on 28x28
inputs, both from examples/torch_models.py) and each world size, one
`mpiexec -n P` job (mpidsgd/bench/torch_worker.py) runs, on the same
data, batches, initial values and number of samples, one thread per rank:

    builtin-sgd            mpidsgd sgd on the built-in mlp (MLP only: the 1.2x target)
    sgd, spardl, palsgd    mpidsgd through the torch adapter (spardl at 1 % density);
                           the MLP takes the adapter's direct path (no autograd)
    sgd-autograd           sgd through the adapter with model.backward = "autograd"
    torch-bare             plain PyTorch forward, backward, torch.optim.SGD; no
                           communication, no mpidsgd (the per-op floor)
    ddp                    torch DistributedDataParallel over gloo (loopback only)
    ddp-fp16               DDP + fp16_compress_hook
    ddp-powersgd-1, -4     DDP + powerSGD_hook, matrix approximation rank 1 and 4

and the table gives samples/s over the timed steps, step time (the median of
--repeat interleaved runs, and their range), each method's step time over the
built-in mlp's, over torch-bare's and over DDP's, CPU time per step (the
ranks' mean, median over the runs: on a shared machine the steadier figure),
bytes sent per rank per step, and test accuracy after the same number of
samples. Needs the torch extra.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def register(sub):
    p = sub.add_parser("torch", help="torch models: mpidsgd (sgd, spardl, palsgd) vs DDP and its hooks")
    p.add_argument("--ranks", default="1,2,4", help="comma-separated world sizes")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    p.add_argument("--methods", help="comma-separated subset (default: all)")
    p.add_argument("--samples", type=int, default=0,
                   help="training samples per run, all ranks (0: one epoch: mlp 65536, cnn 16384)")
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps per run")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per method, interleaved round-robin; the median is reported")
    p.add_argument("--examples", default=str(Path(__file__).resolve().parents[2] / "examples"),
                   help="folder holding torch_models.py")
    p.add_argument("--out", default="runs/bench-torch", help="folder for the CNN's image files")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per mpiexec job")
    p.set_defaults(func=run)


def write_images(prefix, n_train=16384, n_test=4096, seed=0):
    """28x28 images of 10 classes for the CNN: each class a fixed template of
    three Gaussian bumps; a sample shifts it by up to 3 pixels, scales it and
    adds noise. PREFIX-train.npz and PREFIX-test.npz (X: (n, 28, 28), y)."""
    import numpy as np
    rng = np.random.default_rng([seed, 0x1A6E])
    grid = np.arange(28.0)
    centres = rng.uniform(6, 22, size=(10, 3, 2))
    templates = np.zeros((10, 28, 28))
    for c in range(10):
        for cy, cx in centres[c]:
            templates[c] += np.exp(-((grid[:, None] - cy) ** 2 + (grid[None, :] - cx) ** 2) / 8.0)
    for split, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n)
        X = np.empty((n, 28, 28), np.float32)
        for i in range(n):
            dy, dx = rng.integers(-3, 4, 2)
            X[i] = np.roll(templates[y[i]], (dy, dx), axis=(0, 1)) * rng.uniform(0.7, 1.3)
        X += rng.normal(0.0, 0.3, X.shape).astype(np.float32)
        np.savez(f"{prefix}-{split}.npz", X=X, y=y)


def launch(args, model, P):
    """One mpiexec job: its JSON records."""
    cmd = ["mpiexec", "-n", str(P), sys.executable, "-m", "mpidsgd.bench.torch_worker",
           "--model", model, "--samples", str(args.samples), "--warmup", str(args.warmup),
           "--repeat", str(args.repeat),
           "--examples", args.examples, "--images", args.images]
    if args.methods:
        cmd += ["--methods", args.methods]
    env = dict(os.environ, MPIEXEC_TIMEOUT=str(int(args.timeout)))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else 0.5 * (xs[mid - 1] + xs[mid])


def median_record(runs):
    """One record for a method's repeats: the median step time (and the
    samples/s it gives; the median fwd_bwd_ms too where there is one),
    every repeat's step time beside it."""
    rec = dict(runs[0], step_ms=median(r["step_ms"] for r in runs),
               step_ms_runs=[r["step_ms"] for r in runs])
    for key in ("cpu_ms", "fwd_bwd_ms"):
        if key in rec:
            rec[key] = median(r[key] for r in runs)
    rec["samples_per_s"] = rec["samples"] / rec["steps"] / (rec["step_ms"] / 1e3)
    return rec


def round_robin(methods, repeat):
    """Per repeat every method once, the order rotated by one each repeat, so
    load phases and each method's predecessor fall on all alike."""
    for r in range(repeat):
        k = r % len(methods)
        yield from methods[k:] + methods[:k]


def table(records) -> str:
    """Markdown: one row per (model, ranks, method); ratios are of median step times."""
    def ref(method):
        return {(r["model"], r["ranks"]): r["step_ms"] for r in records if r["method"] == method}

    refs = [ref("builtin-sgd"), ref("torch-bare"), ref("ddp")]
    out = ["| model | ranks | method | samples/s | step ms | runs (ms) | vs built-in | vs torch-bare "
           "| vs ddp | cpu ms | bytes/rank/step | test acc |", "|---" * 12 + "|"]
    for r in records:
        key = (r["model"], r["ranks"])
        runs = r.get("step_ms_runs", [r["step_ms"]])
        ratios = " | ".join(f"{r['step_ms'] / b[key]:.2f}x" if key in b else "" for b in refs)
        cpu = f"{r['cpu_ms']:.2f}" if "cpu_ms" in r else ""
        out.append(f"| {r['model']} | {r['ranks']} | {r['method']} | {r['samples_per_s']:.0f} | "
                   f"{r['step_ms']:.2f} | {min(runs):.2f}-{max(runs):.2f} | {ratios} | {cpu} | "
                   f"{r['bytes_per_rank_per_step']:.0f} | {100 * r['test_accuracy']:.2f} % |")
    return "\n".join(out)


def run(args):
    try:
        import torch  # noqa: F401
    except ImportError:
        print("mpidsgd: error: bench torch needs PyTorch: pip install 'mpidsgd[torch]'",
              file=sys.stderr)
        return 2
    records = []
    os.makedirs(args.out, exist_ok=True)
    args.images = os.path.abspath(os.path.join(args.out, "images"))
    if "cnn" in args.models.split(","):
        write_images(args.images)
    for model in args.models.split(","):
        for P in (int(x) for x in args.ranks.split(",")):
            got = launch(args, model, P)
            for r in got:
                print(json.dumps(r), flush=True)
            records += got
    print(table(records))
    for r in records:
        if "fwd_bwd_ms" in r:
            print(f"{r['model']} P={r['ranks']}: torch-bare's forward + backward alone "
                  f"{r['fwd_bwd_ms']:.2f} CPU ms per step")
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0
