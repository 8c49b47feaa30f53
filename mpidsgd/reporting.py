"""Recording of a training run: metrics.jsonl, progress lines and
summary.json (rank 0 writes them; every other rank stays silent)."""
from __future__ import annotations

import json
import os
import sys
import time

from .checkpoint.disk import no_space, try_append, write_text


class Log:
    """Rank 0 prints and writes metrics; every other rank stays silent."""

    def __init__(self, topo, out_dir, enabled=True, append=False):
        """append: keep the records already there (a resume, which rewinds
        them to its step); a fresh run starts the file anew."""
        self.root = topo.is_root
        self.fh = None
        self.failed = None       # the one-line error of a record that could not be written
        self.stdout_open = True
        if self.root and enabled:
            os.makedirs(out_dir, exist_ok=True)
            self.fh = open(os.path.join(out_dir, "metrics.jsonl"), "a" if append else "w")

    def say(self, text):
        if self.root and text and self.stdout_open:
            try:
                print(text, flush=True)
            except BrokenPipeError:
                # the reader of a pipe left (`... | head`): the run goes on,
                # its records still go to metrics.jsonl and summary.json
                self.stdout_open = False
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)

    def record(self, **fields):
        if self.fh and not self.failed:     # a failed append stops every rank (control.py)
            self.failed = try_append(self.fh, json.dumps(fields) + "\n")

    def rewind(self, step):
        """Resuming at `step`: drop the records a killed run wrote after it,
        so metrics.jsonl reads as if the run had never stopped."""
        if not self.fh:
            return
        self.fh.close()
        path = self.fh.name
        with open(path) as fh:
            keep = [ln for ln in fh if ln.strip() and _kept(ln, step)]
        text = "".join(keep)
        try:
            write_text(path, text)      # all or nothing: the old file stays on failure
        except OSError as exc:
            # a full disk: every rank stops at its first poll (control.py)
            self.failed = f"cannot rewrite {path}: " + no_space(
                os.path.dirname(os.path.abspath(path)), len(text), what="file", exc=exc)
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
