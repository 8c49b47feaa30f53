"""One cell of `python -m mpidsgd.bench torch`: every method on one model and
world size, run by `mpiexec -n P python -m mpidsgd.bench.torch_worker`.

All methods get the same data (mpidsgd's synthetic shards, the same batches
in the same order), the same factory-built module with the same initial
values (torch.manual_seed(seed)), batch, learning rate and heavy-ball
momentum, and the same number of samples. Per method rank 0 prints one JSON
line: step time, samples/s, bytes sent per rank per step, test accuracy.
With --repeat R each method runs R times, interleaved round-robin with the
others, and the line gives the median step time (and every run's).

"torch-bare" is the plain PyTorch loop (forward, backward, torch.optim.SGD)
with no mpidsgd and no communication: each rank trains alone. It measures
PyTorch's own per-step cost, and its record adds `fwd_bwd_ms`, the CPU time
of forward and backward alone: the floor under any step through the adapter.

Bytes are booked with mpidsgd's allreduce rule (a ring: 2(P-1)/P of the
payload per rank) for DDP too: plain DDP allreduces every gradient (its
buckets hold all parameters), and a hooked DDP allreduces the tensors its
hook hands to `torch.distributed.all_reduce`, counted by a wrapper around it.
"""
from __future__ import annotations

from mpidsgd.threads import one_thread_per_rank

one_thread_per_rank()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from mpi4py import MPI  # noqa: E402

from mpidsgd.bench.torch_ddp import median_record, round_robin  # noqa: E402
from mpidsgd.catalog import config_from_dict  # noqa: E402
from mpidsgd.comm import costmodel as cm  # noqa: E402
from mpidsgd.evaluate import evaluate  # noqa: E402
from mpidsgd.optim import schedule_from  # noqa: E402
from mpidsgd.topology import Topology  # noqa: E402

COMM = MPI.COMM_WORLD
MODELS = {   # name: (factory, built-in twin or None)
    "mlp": ("torch_models:mlp", {"name": "mlp", "hidden": [256, 256]}),
    "cnn": ("torch_models:cnn", None),
}
PALSGD_P = 0.1
MPIDSGD = {"sgd": {"name": "sgd"}, "spardl": {"name": "spardl", "density": 0.01},
           "palsgd": {"name": "palsgd", "p": PALSGD_P}}
DDP = ("ddp", "ddp-fp16", "ddp-powersgd-1", "ddp-powersgd-4")


def job(args, model, algo):
    """The shared run config; `model` and `algo` are the [model] and [algo] tables."""
    samples = args.samples or (65536 if args.model == "mlp" else 16384)    # one epoch
    steps = samples // (args.batch * COMM.size)
    if algo.get("name") == "palsgd":   # mixing steps take no batch: the same samples
        steps = round(steps / (1 - PALSGD_P))
    if args.model == "mlp":     # the quickstart's data
        data = {"name": "synthetic", "n_samples": 65536, "n_test": 8192, "n_features": 64,
                "n_classes": 10}
    else:                       # 28x28 images written by the driver
        data = {"name": "file", "path": args.images + "-train.npz",
                "test_path": args.images + "-test.npz"}
    return config_from_dict({
        "run": {"seed": args.seed, "steps": steps, "eval_every": 0, "progress": False},
        "data": {**data, "batch_size": args.batch},
        "model": model, "algo": {"lr": args.lr, "momentum": 0.9, "schedule": "cosine", **algo}})


def torch_table(args):
    return {"name": "torch", "factory": MODELS[args.model][0], "path": args.examples}


def mean_over_ranks(x):
    return COMM.allreduce(float(x)) / COMM.size


def timed(step, n, warmup):
    """Run `step` n times; (seconds, CPU seconds) of the steps after the first
    `warmup` (JIT compiles and first allocations): the slowest rank's wall
    time and the ranks' mean CPU time. On a shared machine the CPU time is
    the steadier figure: time spent waiting for a core is not in it."""
    for _ in range(warmup):
        step()
    COMM.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n - warmup):
        step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return COMM.allreduce(wall, op=MPI.MAX), mean_over_ranks(cpu)


def run_mpidsgd(args, model_table, algo):
    """mpidsgd's own loop (train.build, algo.step): timing, bytes, accuracy."""
    from mpidsgd.train import build
    ctx = build(job(args, model_table, algo), Topology())
    a, ch, data = ctx["algo"], ctx["channel"], ctx["data"]
    with ch.phase("train"):
        dt, cpu = timed(lambda: a.step(data.train), a.total_steps, args.warmup)
        a.finish()
    acc = evaluate(ctx["model"], a.consensus_params(), data.test_X, data.test_y,
                   channel=ch, task=data.task)["test_accuracy"]
    nbytes = mean_over_ranks(ch.counters.bytes.get("train", 0.0)) / a.total_steps
    return a.total_steps, dt, nbytes, acc, COMM.allreduce(a.samples), {"cpu": cpu}


# -- PyTorch DDP ---------------------------------------------------------------------
def init_gloo():
    """torch.distributed over gloo on the loopback interface only."""
    import torch.distributed as dist
    port = None
    if COMM.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = COMM.bcast(port)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=COMM.rank, world_size=COMM.size)


class AllreduceCounter:
    """Wraps torch.distributed.all_reduce: the payload bytes hooks hand it."""

    def __init__(self):
        import torch.distributed as dist
        self.dist, self.orig, self.nbytes = dist, dist.all_reduce, 0

        def counting(tensor, *a, **k):
            self.nbytes += tensor.numel() * tensor.element_size()
            return self.orig(tensor, *a, **k)
        dist.all_reduce = counting

    def close(self):
        self.dist.all_reduce = self.orig


def torch_module(args, shape):
    """The factory's module with the adapter's initial values."""
    import torch
    from mpidsgd.models.torch_adapter import load_factory
    torch.manual_seed(args.seed)
    return load_factory(MODELS[args.model][0], args.examples)(shape, 10)


def ddp_module(args, kind, module):
    """(DDP-wrapped module, counter or None) for one DDP variant."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel
    ddp = DistributedDataParallel(module)
    counter = None
    if kind == "ddp-fp16":
        counter = AllreduceCounter()
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    elif kind.startswith("ddp-powersgd"):
        counter = AllreduceCounter()
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=int(
            kind.rsplit("-", 1)[1]), start_powerSGD_iter=2, min_compression_rate=1.0)
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    return ddp, counter


def run_torch(args, kind):
    """A plain PyTorch loop on the very batches mpidsgd's shard hands out:
    DDP (`kind` one of DDP) or, for "torch-bare", the bare module with no
    communication at all (each rank trains alone: the per-op floor of
    forward, backward and torch.optim.SGD, with no mpidsgd in the step)."""
    import torch
    import torch.nn.functional as F
    from mpidsgd.backend import Backend
    from mpidsgd.comm.channel import Channel
    from mpidsgd.data import load_data
    cfg = job(args, torch_table(args), {"name": "sgd"})
    data = load_data(cfg, Channel(COMM, backend=Backend()), Backend())
    net = module = torch_module(args, tuple(data.input_shape))
    counter = None
    if kind != "torch-bare":
        net, counter = ddp_module(args, kind, module)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    steps, shard = cfg.run.steps, data.train
    # mpidsgd's cosine schedule, value for value
    lr_at = schedule_from(cfg.algo, steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_at(t) / args.lr)

    fwd_bwd = []      # CPU seconds of forward + backward alone, per step

    def step():
        X, y, _ = shard.next_batch()
        opt.zero_grad()
        t0 = time.thread_time()
        F.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        fwd_bwd.append(time.thread_time() - t0)
        opt.step()
        sched.step()
    net.train()
    dt, cpu = timed(step, steps, args.warmup)
    extra = {"cpu": cpu}
    if kind == "torch-bare":
        extra["fwd_bwd_ms"] = 1e3 * mean_over_ranks(sum(fwd_bwd[args.warmup:])) / (steps - args.warmup)
    if counter is not None:
        counter.close()
        payload = counter.nbytes / steps
    else:      # no hook: the reducer allreduces every gradient, all parameters
        payload = sum(p.numel() * p.element_size() for p in net.parameters())
    if kind == "torch-bare":
        payload = 0.0
    nbytes = mean_over_ranks(cm.allreduce_booking(payload, COMM.size)[0] if COMM.size > 1 else 0.0)
    module.eval()
    with torch.inference_mode():
        pred = module(torch.from_numpy(data.test_X)).argmax(1).numpy()
    acc = COMM.allreduce(float((pred == data.test_y).sum())) / COMM.allreduce(len(data.test_y))
    return steps, dt, nbytes, acc, steps * args.batch * COMM.size, extra


def run_method(args, method):
    """One run of `method`: its record (None: no built-in twin of this model)."""
    if method == "builtin-sgd":
        twin = MODELS[args.model][1]
        if twin is None:
            return None
        res = run_mpidsgd(args, twin, MPIDSGD["sgd"])
    elif method in MPIDSGD:
        res = run_mpidsgd(args, torch_table(args), MPIDSGD[method])
    elif method == "sgd-autograd":       # sgd with the direct path switched off
        res = run_mpidsgd(args, {**torch_table(args), "backward": "autograd"}, MPIDSGD["sgd"])
    else:
        res = run_torch(args, method)
    steps, dt, nbytes, acc, samples, extra = res
    timed_steps = steps - args.warmup
    return {"model": args.model, "ranks": COMM.size, "method": method, "steps": steps,
            "samples": samples, "step_ms": 1e3 * dt / timed_steps,
            "cpu_ms": 1e3 * extra.pop("cpu") / timed_steps,
            "bytes_per_rank_per_step": nbytes, "test_accuracy": acc, **extra}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m mpidsgd.bench.torch_worker")
    p.add_argument("--model", choices=sorted(MODELS), default="mlp")
    p.add_argument("--methods", default=",".join(["builtin-sgd", "sgd", "sgd-autograd", "spardl",
                                                  "palsgd", "torch-bare", *DDP]))
    p.add_argument("--samples", type=int, default=0, help="training samples, all ranks (0: one epoch)")
    p.add_argument("--images", default="", help="cnn: the image files' prefix (PREFIX-train.npz)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    p.add_argument("--examples", default="examples", help="folder of torch_models.py")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per method, interleaved round-robin; the median is reported")
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_num_interop_threads(1)     # one thread per rank, inter-op pool too
    gloo, runs = False, {}
    for method in round_robin(args.methods.split(","), args.repeat):
        if method in DDP and not gloo:
            init_gloo()
            gloo = True
        rec = run_method(args, method)
        if rec is not None:
            rec["torch_threads"] = [torch.get_num_threads(), torch.get_num_interop_threads()]
            runs.setdefault(method, []).append(rec)
    if COMM.rank == 0:
        for method in args.methods.split(","):
            if method in runs:
                print(json.dumps(median_record(runs[method])), flush=True)
    if gloo:
        import torch.distributed as dist
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
