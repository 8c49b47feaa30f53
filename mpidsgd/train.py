"""`python -m mpidsgd.train`: data-parallel training across MPI ranks.

    mpiexec -n 4 python -m mpidsgd.train                     # built-in quickstart
    mpiexec -n 8 python -m mpidsgd.train --config jobs/x.toml --set algo.lr=0.05

Rank 0 prints and writes <run.out_dir>/{config.toml, metrics.jsonl, summary.json}.
Invalid input exits with code 2 and one line; an exception on any rank aborts
the whole job.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

from .threads import one_thread_per_rank

one_thread_per_rank()        # before NumPy/Numba create their thread pools

import numpy as np  # noqa: E402

from . import config as C  # noqa: E402
from .meter import Meter  # noqa: E402

QUICKSTART = {
    "run": {"seed": 0, "epochs": 6.0, "eval_every": 500, "out_dir": "runs/quickstart"},
    "data": {"name": "synthetic", "n_samples": 65536, "n_test": 8192, "n_features": 64,
             "n_classes": 10, "batch_size": 32},
    "model": {"name": "mlp", "hidden": [256, 256]},
    "algo": {"name": "spardl", "lr": 0.05, "momentum": 0.9, "schedule": "cosine"},
}

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mpidsgd.train",
        description="Train a flat-buffer model data-parallel over MPI ranks. "
                    "Without --config, runs the built-in quickstart.",
        epilog="Config keys: see README.md (Configuration). Example: "
               "--set algo.name=spardl --set algo.density=0.01")
    p.add_argument("--config", help="TOML job file (jobs/*.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable); the value is a TOML literal")
    p.add_argument("--resume", metavar="auto|FILE",
                   help="resume from the newest valid checkpoint (auto) or from FILE")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as TOML and exit")
    return p.parse_args(argv)


class Log:
    """Rank 0 prints and writes metrics; every other rank stays silent."""

    def __init__(self, topo, out_dir, enabled=True, append=False):
        """append: keep the records already there (a resume, which rewinds
        them to its step); a fresh run starts the file anew."""
        self.root = topo.is_root
        self.fh = None
        if self.root and enabled:
            os.makedirs(out_dir, exist_ok=True)
            self.fh = open(os.path.join(out_dir, "metrics.jsonl"), "a" if append else "w")

    def say(self, text):
        if self.root:
            print(text, flush=True)

    def record(self, **fields):
        if self.fh:
            self.fh.write(json.dumps(fields) + "\n")
            self.fh.flush()

    def rewind(self, step):
        """Resuming at `step`: drop the records a killed run wrote after it,
        so metrics.jsonl reads as if the run had never stopped."""
        if not self.fh:
            return
        self.fh.close()
        path = self.fh.name
        with open(path) as fh:
            keep = [ln for ln in fh if ln.strip() and _kept(ln, step)]
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            fh.writelines(keep)
        os.replace(tmp, path)
        self.fh = open(path, "a")

    def close(self):
        if self.fh:
            self.fh.close()


def _kept(line, step):
    try:
        rec = json.loads(line)
    except ValueError:
        return False
    return rec.get("kind") != "final" and rec.get("step", 0) <= step


def fail_input(topo, message):
    """Invalid input: one line from rank 0, exit code 2 on every rank."""
    if topo.is_root:
        print(f"mpidsgd: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def setup(args, topo):
    """Config, backend, channel, data, model, algorithm: decided collectively."""
    from .comm.channel import agree_error
    err, cfg = None, None
    expect = os.environ.get("MPIDSGD_EXPECT_WORLD_SIZE", "")
    if expect and expect != str(topo.size):
        fail_input(topo, f"MPI world size {topo.size} differs from MPIDSGD_EXPECT_WORLD_SIZE="
                         f"{expect} (SLURM_NTASKS): is mpi4py built against the cluster's MPI?")
    try:
        cfg = C.load(args.config, args.overrides, base=None if args.config else QUICKSTART)
        from .algorithms import REGISTRY
        REGISTRY[cfg.algo.name].check_world(cfg, topo.size)
    except C.ConfigError as exc:
        err = str(exc)
    err = agree_error(topo.world, err)
    if err:
        fail_input(topo, err)
    if args.print_config:
        if topo.is_root:
            print(C.dumps(cfg))
        sys.exit(0)
    ctx = build(cfg, topo)
    return cfg, ctx


def build(cfg, topo):
    """Everything a run needs, in the order DESIGN.md gives."""
    from .backend import Backend
    from .comm.channel import Channel, NetworkEmulation, agree_error
    from .data import load_data
    from .models import build_model
    from .algorithms import REGISTRY

    backend = Backend(cfg.run.device, cfg.comm.cuda_aware, topo.local_rank)
    emu = cfg.comm.emulate
    channel = Channel(topo.world, backend=backend, emulate=NetworkEmulation(emu.alpha, emu.beta))
    err, data = None, None
    try:
        with channel.phase("setup"):
            data = load_data(cfg, channel, backend, skip=REGISTRY[cfg.algo.name].data_skip(cfg))
    except C.ConfigError as exc:
        err = str(exc)
    err = agree_error(topo.world, err)
    if err:
        fail_input(topo, err)
    m = cfg.model
    model = build_model(m.name, input_shape=data.input_shape, n_outputs=data.n_outputs,
                        hidden=tuple(m.hidden), channels=tuple(m.channels), kernel=m.kernel,
                        l2=m.l2, dtype=cfg.run.dtype, xp=backend.xp)
    params = backend.xp.zeros(model.layout.size, dtype=cfg.run.dtype)
    # identical initial parameters on every rank: the same seeded stream
    model.init(params, np.random.default_rng([cfg.run.seed, 0x1D]))
    algo = REGISTRY[cfg.algo.name](cfg, topo, backend, model, params, channel)
    algo.plan(data.train)
    return {"backend": backend, "channel": channel, "data": data, "model": model, "algo": algo}


def open_checkpoints(cfg, topo, ctx, log, args, force=False):
    """The CheckpointManager (and the resume) when checkpoints are in play
    (`force`: a preemption checkpoint of a run without checkpoint.every);
    an unusable checkpoint is an input error: one line, exit 2, every rank."""
    if not (force or cfg.checkpoint.every or args.resume):
        return None
    from .checkpoint import CheckpointManager, CheckpointError
    ckpt = CheckpointManager(cfg, topo, ctx, log)
    if args.resume:
        try:
            ckpt.resume(args.resume)
        except CheckpointError as exc:
            fail_input(topo, str(exc))
    return ckpt


def run(cfg, ctx, topo, args):
    """The training loop; returns the summary dict (rank 0) or None."""
    from .control import StopAgreement
    from .evaluate import evaluate, finite, full_train_loss
    algo, data, model, channel = ctx["algo"], ctx["data"], ctx["model"], ctx["channel"]
    shard = data.train
    out = cfg.run.out_dir
    if topo.is_root:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "config.toml"), "w") as fh:
            fh.write(C.dumps(cfg))
    log = Log(topo, out, append=bool(getattr(args, "resume", None)))
    meter = ctx["meter"] = Meter()
    ckpt = open_checkpoints(cfg, topo, ctx, log, args)
    stop = StopAgreement(channel, time_limit_s=cfg.run.time_limit_s, collective=algo.synchronous)
    log.say(f"mpidsgd: {cfg.algo.name} on {topo.size} rank(s), model {model.name} "
            f"({model.layout.size} params), {data.n_train} training samples, "
            f"{algo.total_steps} steps")
    stop_reason = None

    def account(info, s, before):
        """The running loss, and a training record every run.log_every steps."""
        if info.loss is not None:
            if not finite(info.loss):
                raise FloatingPointError(
                    f"non-finite training loss {info.loss} at step {s} on rank "
                    f"{topo.rank}; lower algo.lr (checkpoints already written are kept)")
            meter.add(info.loss)
        # a server's step may apply nothing (no message yet): log only on progress
        if s % cfg.run.log_every == 0 and meter.loss_n and s != before:
            log.record(kind="train", step=s, epoch=shard.epoch + shard.pos / shard.steps_per_epoch,
                       loss=meter.mean(), time_s=time.perf_counter() - meter.t0,
                       bytes_train=channel.counters.bytes.get("train", 0.0), **algo.log_fields())

    while True:
        # asynchronous algorithms: checkpoints and stops happen where every
        # rank has agreed and quiesced (control.py); synchronous ones stop here
        verdict = stop.poll(leaving=algo.done(),
                            want_checkpoint=ckpt is not None and ckpt.wants())
        stop_reason = verdict.stop
        if verdict and not algo.synchronous:
            # steps taken while quiescing (a server answering late gradients) are logged too
            for s_q, info_q in algo.quiesce() or ():
                account(info_q, s_q, s_q - 1)
            if verdict.checkpoint or stop_reason:
                ckpt = ckpt or open_checkpoints(cfg, topo, ctx, log, args, force=True)
                ckpt.save(final=bool(stop_reason))
        if stop_reason or algo.done():
            break
        if cfg.debug.fail_at_step == algo.step_count and topo.rank == cfg.debug.fail_rank:
            raise RuntimeError(f"injected fault at step {algo.step_count} on rank {topo.rank}")
        before = algo.step_count
        info = algo.step(shard)
        s = algo.step_count
        account(info, s, before)
        if cfg.run.eval_every and s % cfg.run.eval_every == 0 and algo.synchronous:
            last = evaluate(model, algo.consensus_params(), data.test_X, data.test_y,
                            channel=channel, task=data.task)
            report(log, cfg, algo, shard, channel, last, meter.mean(), meter.t0)
            meter.reset()
        if ckpt is not None and algo.synchronous:
            ckpt.maybe_save()
    if stop_reason and algo.synchronous:
        # preemption or time limit: every rank is at the same step boundary
        ckpt = ckpt or open_checkpoints(cfg, topo, ctx, log, args, force=True)
        if ckpt.last_step != algo.step_count:
            ckpt.save(final=True)
    t0 = meter.t0
    algo.finish()
    stop.close()     # after finish: asynchronous ranks may leave their loops at different times
    params = algo.consensus_params()
    final = evaluate(model, params, data.test_X, data.test_y, channel=channel, task=data.task)
    train_loss = full_train_loss(model, params, shard, channel=channel)
    wall = time.perf_counter() - t0
    report(log, cfg, algo, shard, channel, final, train_loss, t0, final=True)
    summary = make_summary(cfg, topo, algo, shard, channel, final, train_loss, wall, stop_reason)
    if topo.is_root:
        with open(os.path.join(out, "summary.json"), "w") as fh:
            json.dump(summary, fh, indent=2)
    log.close()
    return summary


def report(log, cfg, algo, shard, channel, metrics, loss, t0, final=False):
    """Progress line (rank 0) and an eval record in metrics.jsonl."""
    el = time.perf_counter() - t0
    s = algo.step_count
    rate = algo.progress_samples() / el if el > 0 else 0.0   # rank 0's pace, all ranks
    mb = channel.counters.bytes.get("train", 0.0) / 1e6
    ep = shard.epoch + shard.pos / shard.steps_per_epoch
    acc = metrics.get("test_accuracy")
    quality = f"acc {100 * acc:6.2f}%" if acc is not None else f"mse {metrics.get('test_mse', 0):.4g}"
    log.record(kind="final" if final else "eval", step=s, epoch=ep, train_loss=loss,
               time_s=el, bytes_train=mb * 1e6, **metrics)
    if cfg.run.progress or final:
        tag = "final" if final else f"step {s:>6}/{algo.total_steps}"
        log.say(f"{tag}  ep {ep:6.2f}  loss {loss:.4f}  {quality}  "
                f"{rate:9.0f} samples/s  {mb:9.2f} MB sent/rank")


def make_summary(cfg, topo, algo, shard, channel, final, train_loss, wall, stop_reason):
    """summary.json fields (DESIGN.md); communication figures are rank means."""
    phases = sorted(set(channel.counters.bytes))
    with channel.phase("metrics"):
        vals = channel.allreduce_values(
            [algo.samples] + [channel.counters.bytes.get(p, 0.0) for p in phases]
            + [channel.counters.messages.get(p, 0) for p in phases])
    P = topo.size
    nb = len(phases)
    by_bytes = {p: vals[1 + i] / P for i, p in enumerate(phases)}
    by_msgs = {p: vals[1 + nb + i] / P for i, p in enumerate(phases)}
    emu = cfg.comm.emulate
    summary = {
        "algorithm": cfg.algo.name,
        "world_size": P,
        "steps": algo.step_count,
        "samples_processed": int(vals[0]),
        "epochs": shard.epoch + shard.pos / shard.steps_per_epoch,
        "final_test_accuracy": final.get("test_accuracy"),
        "final_test_mse": final.get("test_mse"),
        "final_test_loss": final.get("test_loss"),
        "final_train_loss": train_loss,
        "wall_time_s": wall,
        "bytes_sent_per_rank": by_bytes.get("train", 0.0),
        "messages_per_rank": by_msgs.get("train", 0.0),
        "bytes_by_phase": by_bytes,
        "messages_by_phase": by_msgs,
        "stopped_by": stop_reason or "budget",
    }
    if emu.active:
        summary["emulation"] = {"alpha": emu.alpha, "beta": emu.beta, "compute": emu.compute,
                                "compute_s": emu.compute_s, "slow_ranks": emu.slow_ranks,
                                "slowdown": emu.slowdown}
    summary.update(algo.summary())
    return summary


def main(argv=None):
    args = parse_args(argv)
    from mpi4py import MPI
    from .topology import Topology
    topo = Topology()
    try:
        cfg, ctx = setup(args, topo)
        run(cfg, ctx, topo, args)
    except SystemExit:
        raise
    except BaseException as exc:
        from .checkpoint import AgreedError
        if isinstance(exc, AgreedError):
            # raised identically on every rank (e.g. diverged parameters at a checkpoint)
            if topo.is_root:
                print(f"mpidsgd: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(1)
        # one rank failing must not leave the others waiting forever
        sys.stderr.write(f"mpidsgd: rank {topo.rank} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
