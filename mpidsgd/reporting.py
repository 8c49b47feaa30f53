"""Progress lines and summary.json of a training run (rank 0 writes them)."""
from __future__ import annotations

import time


def report(log, cfg, algo, shard, channel, metrics, loss, t0, final=False):
    """Progress line (rank 0) and an eval record in metrics.jsonl."""
    el = time.perf_counter() - t0
    s = algo.step_count
    samples = algo.progress_samples()          # rank 0's estimate over all ranks
    rate = samples / el if el > 0 else 0.0
    mb = channel.counters.bytes.get("train", 0.0) / 1e6
    ep = shard.epoch + shard.pos / shard.steps_per_epoch
    acc = metrics.get("test_accuracy")
    quality = f"acc {100 * acc:6.2f}%" if acc is not None else f"mse {metrics.get('test_mse', 0):.4g}"
    log.record(kind="final" if final else "eval", step=s, epoch=ep, train_loss=loss,
               time_s=el, bytes_train=mb * 1e6, samples=samples, **metrics)
    if cfg.run.progress or final:
        tag = "final" if final else f"step {s:>6}/{algo.total_steps}"
        log.say(f"{tag}  ep {ep:6.2f}  loss {loss:.4f}  {quality}  "
                f"{rate:9.0f} samples/s  {mb:9.2f} MB sent/rank")


def make_summary(cfg, topo, algo, shard, channel, final, train_loss, wall, stop_reason):
    """summary.json fields (docs/getting-started.md); communication figures are rank means."""
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
