"""`python -m mpidsgd.train`: data-parallel training across MPI ranks.

    mpiexec -n 4 python -m mpidsgd.train                     # built-in quickstart
    mpiexec -n 8 python -m mpidsgd.train --config jobs/x.toml --set algo.lr=0.05

Rank 0 prints and writes <run.out_dir>/{config.toml, metrics.jsonl, summary.json}.
Invalid input exits with code 2 and one line; an exception on any rank aborts
the whole job.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from .threads import one_thread_per_rank

one_thread_per_rank()        # before NumPy/Numba create their thread pools

import numpy as np  # noqa: E402

from . import config as C  # noqa: E402
from .checkpoint.disk import write_summary  # noqa: E402
from .errors import InputError  # noqa: E402
from .meter import Meter  # noqa: E402

from .defaults import QUICKSTART, load_cli  # noqa: E402,F401  (QUICKSTART: the built-in job)
from .reporting import Log, make_summary, report  # noqa: E402
from .startup import describe_task  # noqa: E402

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m mpidsgd.train",
        description="Train a flat-buffer model data-parallel over MPI ranks. A run without "
                    "--config is the built-in quickstart (jobs/quickstart.toml); a --config "
                    "file and --set change keys of it.",
        epilog="Defaults: every key that neither the --config file nor --set gives takes "
               "the quickstart's value (docs/configuration.md and python -m mpidsgd.config "
               "list them all, --print-config shows a run's). "
               "Example: --set algo.name=sgd --set algo.lr=0.1")
    p.add_argument("--config", help="TOML job file (jobs/*.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config key (repeatable); the value is a TOML literal")
    p.add_argument("--resume", metavar="auto|FILE",
                   help="resume from the newest valid checkpoint (auto) or from FILE")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as TOML and exit")
    return p.parse_args(argv)


def fail(topo, exc):
    """An error raised alike on every rank (errors.py): one line from rank 0,
    its exit code (2 for bad input) on every rank."""
    if topo.is_root:
        print(f"mpidsgd: error: {exc}", file=sys.stderr, flush=True)
    sys.exit(exc.exit_code)


def agreed_input(topo, fn):
    """fn() on every rank; bad input seen by any rank ends the run on every
    rank with that rank's line (comm/agree.py)."""
    from .comm.agree import agreed
    try:
        return agreed(topo.world, fn)
    except InputError as exc:
        fail(topo, exc)


def setup(args, topo):
    """Config, backend, channel, data, model, algorithm: decided collectively."""
    expect = os.environ.get("MPIDSGD_EXPECT_WORLD_SIZE", "")
    if expect and expect != str(topo.size):
        fail(topo, InputError(
            f"MPI world size {topo.size} differs from MPIDSGD_EXPECT_WORLD_SIZE="
            f"{expect} (SLURM_NTASKS): is mpi4py built against the cluster's MPI?"))

    def load():
        # the algorithm's own rules run here, once, with the world size
        cfg, notes = load_cli(args.config, args.overrides, world_size=topo.size)
        if not args.print_config:
            notes = list(notes) + check_start(cfg, topo)
        return cfg, notes
    cfg, notes = agreed_input(topo, load)
    if args.print_config:
        if topo.is_root:
            print(C.dumps(cfg))
        sys.exit(0)
    for note in notes if topo.is_root else ():
        print(f"mpidsgd: {note}", flush=True)
    ctx = build(cfg, topo)
    return cfg, ctx


def check_start(cfg, topo):
    """Start-up checks that need no data (startup.py): device, CUDA-aware
    MPI, output folder. Returns notes for rank 0 to print."""
    from . import startup
    startup.resolve_task(cfg)
    startup.check_device(cfg)
    notes = startup.check_cuda_aware(cfg)
    if topo.is_root:
        startup.check_writable_dir(cfg.run.out_dir, "run.out_dir")
    return notes


def build(cfg, topo):
    """Everything a run needs, in the order docs/design.md gives."""
    from .backend import Backend
    from .comm.channel import Channel, NetworkEmulation
    from .data import load_data
    from .models import model_for
    from .algorithms import REGISTRY
    from .startup import resolve_task

    from .kernels import set_checks
    task, reason = resolve_task(cfg)
    # debug: the CUDA kernels validate device inputs by reading them back
    set_checks(cfg.debug.check_kernels)
    backend = Backend(cfg.run.device, cfg.comm.cuda_aware, topo.local_rank)
    emu = cfg.comm.emulate
    channel = Channel(topo.world, backend=backend, emulate=NetworkEmulation(emu.alpha, emu.beta))

    def load():
        with channel.phase("setup"):
            data = load_data(cfg, channel, backend, task,
                             skip=REGISTRY[cfg.algo.name].data_skip(cfg))
        return data, model_for(cfg, data, backend.xp)      # a torch factory may fail here
    data, model = agreed_input(topo, load)
    params = init_params(cfg, topo, backend, model)
    algo = REGISTRY[cfg.algo.name](cfg, topo, backend, model, params, channel)
    algo.plan(data.train)
    return {"backend": backend, "channel": channel, "data": data, "model": model, "algo": algo,
            "task_line": describe_task(task, reason, data)}


def init_params(cfg, topo, backend, model):
    """The model's initial parameters, identical on every rank; a model too
    large for this node's memory is an input error (startup.py)."""
    from .startup import check_model_memory
    m = cfg.model

    def init():
        try:
            check_model_memory(cfg, model.layout.size, model.dtype.itemsize, topo.shared.Get_size())
            params = backend.xp.zeros(model.layout.size, dtype=cfg.run.dtype)
            # identical initial parameters on every rank: the same seeded stream
            model.init(params, np.random.default_rng([cfg.run.seed, 0x1D]))
        except MemoryError:
            nbytes = model.layout.size * model.dtype.itemsize
            raise C.ConfigError(f"model.name: model {m.name} has {model.layout.size:,} parameters, "
                                f"{nbytes:,} bytes per copy: out of memory") from None
        return params
    return agreed_input(topo, init)


def open_checkpoints(cfg, topo, ctx, log, args, force=False):
    """The CheckpointManager (and the resume) when checkpoints are in play
    (`force`: a preemption checkpoint of a run without checkpoint.every);
    an unusable checkpoint is an input error: one line, exit 2, every rank."""
    if not (force or cfg.checkpoint.every or args.resume):
        return None
    from .checkpoint.manager import CheckpointManager
    ckpt = CheckpointManager(cfg, topo, log, algo=ctx["algo"], shard=ctx["data"].train,
                             backend=ctx["backend"], channel=ctx["channel"], meter=ctx.get("meter"))
    try:
        if not force:
            ckpt.check_dir()       # at start-up, not at the first checkpoint
        if args.resume:
            ckpt.resume(args.resume)
    except InputError as exc:      # raised alike on every rank
        fail(topo, exc)
    return ckpt


def write_config(topo, out, cfg):
    """Collective: rank 0 writes <out>/config.toml, all or nothing; a disk
    that refuses it is the same one-line error (exit 1) on every rank."""
    from .checkpoint.disk import no_space, write_text
    from .comm.agree import agree_error
    from .errors import AgreedError
    err = None
    if topo.is_root:
        path, text = os.path.join(out, "config.toml"), C.dumps(cfg)
        try:
            os.makedirs(out, exist_ok=True)
            write_text(path, text)
        except OSError as exc:
            err = f"cannot write {path}: " + no_space(out, len(text), what="file", exc=exc)
    err = agree_error(topo.world, err)
    if err:
        fail(topo, AgreedError(err))


def run(cfg, ctx, topo, args):
    """The training loop; returns the summary dict (rank 0) or None."""
    from .control import StopAgreement
    from .evaluate import evaluate, finite, full_train_loss
    algo, data, model, channel = ctx["algo"], ctx["data"], ctx["model"], ctx["channel"]
    shard = data.train
    out = cfg.run.out_dir
    write_config(topo, out, cfg)
    log = Log(topo, out, append=bool(getattr(args, "resume", None)))
    meter = ctx["meter"] = Meter()
    ckpt = open_checkpoints(cfg, topo, ctx, log, args)
    stop = StopAgreement(channel, time_limit_s=cfg.run.time_limit_s, collective=algo.synchronous,
                         failed=lambda: log.failed)
    log.say(f"mpidsgd: {cfg.algo.name} on {topo.size} rank(s), model {model.name} "
            f"({model.layout.size} params), {data.n_train} training samples, "
            f"{algo.total_steps} steps")
    log.say(ctx["task_line"] if cfg.data.name == "file" else None)
    log.say(getattr(model, "path_line", None))        # torch: direct path or autograd, and why
    log.say(f"mpidsgd: outputs in {out}" + (f", checkpoints in {ckpt.dir}" if ckpt else ""))
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
                       bytes_train=channel.counters.bytes.get("train", 0.0),
                       samples=algo.progress_samples(), **algo.log_fields())

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
    write_summary(topo, log, os.path.join(out, "summary.json"), summary)   # collective
    log.close()
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
        from .errors import AgreedError
        if isinstance(exc, AgreedError):
            # raised identically on every rank (e.g. diverged parameters at a checkpoint)
            fail(topo, exc)
        # one rank failing must not leave the others waiting forever
        sys.stderr.write(f"mpidsgd: rank {topo.rank} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
