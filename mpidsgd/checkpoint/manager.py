"""CheckpointManager: the collective save and resume that train.py drives.

save():   every rank packs its per-rank state; rank 0 gathers it over a private
          communicator (phase "checkpoint") and writes one HDF5 file atomically.
          A folder without the space for it is one error on every rank: the
          temporary file is removed and the newest good checkpoint stays.
resume(): see resume.py (rank 0 picks a file; every value is checked by
          schema.py before anything is loaded).
"""
from __future__ import annotations

import datetime
import json
import os
import time

import numpy as np

from .. import __version__
from .. import config as C
from ..comm.agree import agree_error, agreed
from ..errors import AgreedError, CheckpointError
from .disk import (RESUME_HINT, GuardedFile, check_writable, estimate_bytes, free_bytes,
                   no_space, remove_quietly)
from .format import (FORMAT, FORMAT_VERSION, encode, flatten, fsync_path, list_checkpoints,
                     pack, step_of, unpack_arrays, write_array)
from .resume import Resume
from .schema import layout_of
from .transfer import recv_packed, send_packed


class CheckpointManager(Resume):
    """Collective checkpoint writer/reader for one run (see module doc).

    algo, shard, backend, channel: the run's algorithm, training shard,
    backend and main channel; meter: the running loss (train.Meter) or None.
    log: says lines on rank 0, records checkpoints (`failed`: a lost record).
    """

    def __init__(self, cfg, topo, log, *, algo, shard, backend, channel, meter=None):
        self.cfg, self.topo, self.log = cfg, topo, log
        self.algo, self.shard = algo, shard
        self.backend, self.meter = backend, meter
        self.main = channel
        # a private communicator: our point-to-point traffic can never be
        # matched by an algorithm's wildcard receive
        self.ch = self.main.split(0)
        self.dir = cfg.checkpoint.dir or os.path.join(cfg.run.out_dir, "checkpoints")
        self.every = cfg.checkpoint.every
        self.last_step = 0           # step of the newest checkpoint written or resumed
        self.last_write = {}         # seconds, bytes, path of the newest write

    def check_dir(self):
        """Collective, at start-up: checkpoint.dir can be written (else one
        line, exit 2, before any step is taken)."""
        def probe():
            if self.topo.is_root:
                check_writable(self.dir, "checkpoint.dir")
        agreed(self.topo.world, probe, error=CheckpointError)

    # -- when -----------------------------------------------------------------------
    def due(self) -> bool:
        """Synchronous algorithms: every rank knows the step, so no agreement."""
        s = self.algo.step_count
        return bool(self.every) and s % self.every == 0 and s != self.last_step

    def wants(self) -> bool:
        """Asynchronous algorithms: rank 0's step count decides; the request
        travels in the non-blocking stop agreement (control.StopAgreement)."""
        return (self.topo.is_root and bool(self.every)
                and self.algo.step_count >= self.last_step + self.every)

    def maybe_save(self, stop=None):
        if self.due():
            self.save()

    # -- state ------------------------------------------------------------------------
    def local_state(self, algo_local) -> dict:
        out = {f"algo/{k}": v for k, v in flatten(algo_local).items()}
        out.update({f"model/{k}": v for k, v in self.algo.model.state_dict().items()})
        out.update({f"data/{k}": v for k, v in self.shard.state_dict().items()})
        out.update({f"comm/{p}": np.array(v, np.float64)
                    for p, v in self.main.counters.state().items()})
        if self.meter is not None:
            out.update({f"train/{k}": v for k, v in self.meter.state_dict().items()})
        return out

    def attributes(self) -> dict:
        cfg, algo, model = self.cfg, self.algo, self.algo.model
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "mpidsgd_version": __version__, "config": C.dumps(cfg),
                "algorithm": cfg.algo.name, "synchronous": bool(algo.synchronous),
                "world_size": self.topo.size, "step": int(algo.step_count),
                "epoch": float(self.shard.epochs_done), "model": model.name,
                "param_count": int(model.layout.size), "dtype": cfg.run.dtype,
                "layout": json.dumps(layout_of(model)),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat()}

    # -- save -------------------------------------------------------------------------
    def save(self, final=False):
        """Collective: write ckpt-<step>.h5. Refuses (on every rank) to write
        a state whose parameters are not finite, so a good checkpoint is
        never replaced by a diverged one."""
        t0 = time.perf_counter()
        asnp = self.backend.asnumpy
        state = self.algo.state_dict()
        header, payload = pack(self.local_state(state["local"]), asnp)
        finite = bool(self.algo.xp.isfinite(self.algo.params).all())
        # rank 0 could not append a metrics record: the records after the last
        # good checkpoint are gone, so no newer one may be written
        lost = agree_error(self.topo.world, getattr(self.log, "failed", None))
        if lost:
            raise AgreedError(f"{lost}; no newer checkpoint written; {RESUME_HINT}")
        with self.main.phase("checkpoint"), self.ch.phase("checkpoint"):
            sizes = np.zeros((self.topo.size, 3), np.int64)
            self.ch.Allgather(np.array([len(header), payload.size, finite], np.int64), sizes)
            bad = [r for r in range(self.topo.size) if not sizes[r, 2]]
            if bad:
                raise AgreedError(
                    f"non-finite parameters at step {self.algo.step_count} on rank(s) {bad}: "
                    f"training diverged (lower algo.lr); no checkpoint written, the last good "
                    f"one ({self._newest_name()}) is kept")
            if self.topo.is_root:
                err = self._write_root(state["shared"], header, payload, sizes, asnp)
            else:
                send_packed(self.ch, 0, header, payload)
                err = None
        err = agree_error(self.topo.world, err)
        if err:
            raise AgreedError(err)
        self.last_step = self.algo.step_count
        if self.topo.is_root:
            self._report(time.perf_counter() - t0, final)

    def _newest_name(self):
        return f"ckpt-{self.last_step}.h5" if self.last_step else "none yet"

    def _write_root(self, shared, header, payload, sizes, asnp):
        """Rank 0: write the file; always drain every rank's messages, so a
        failing disk gives an error, never a hang. Returns an error or None."""
        step = self.algo.step_count
        path = os.path.join(self.dir, f"ckpt-{step}.h5")
        tmp = os.path.join(self.dir, f".ckpt-{step}.h5.tmp")
        shared = {k: encode(v, asnp) for k, v in flatten(shared).items()}
        n_sets = len(shared) + len(json.loads(header)) * self.topo.size
        need = estimate_bytes(int(sizes[:, 1].sum()) + sum(a.nbytes for a, _, _ in shared.values()),
                              n_sets)
        err, f, g = None, None, None
        try:
            os.makedirs(self.dir, exist_ok=True)
            free = free_bytes(self.dir)
            if free is not None and free < need:
                err = no_space(self.dir, need, free)
            else:
                import h5py
                g = GuardedFile(tmp)
                f = h5py.File(g, "w")
                self._write_head(f, g, shared)
                self._write_rank(f, g, 0, header, payload)
                if self.cfg.debug.slow_checkpoint_s > 0:    # testing aid: a write to kill
                    time.sleep(self.cfg.debug.slow_checkpoint_s)
        except Exception as exc:     # noqa: BLE001  any failure: report it, drain, clean up
            err = self._why(exc, need)
        for r in range(1, self.topo.size):
            h, p = recv_packed(self.ch, r, sizes[r, 0], sizes[r, 1])
            if err is None:
                try:
                    self._write_rank(f, g, r, h, p)
                except Exception as exc:     # noqa: BLE001
                    err = self._why(exc, need)
        err = self._finish_file(f, g, tmp, path, need, err)
        if err:
            remove_quietly(tmp)
            return (f"cannot write checkpoint {os.path.basename(path)}: {err}; the newest good "
                    f"checkpoint ({self._newest_name()}) is kept; {RESUME_HINT}")
        return None

    def _write_head(self, f, g, shared):
        for k, v in self.attributes().items():
            f.attrs[k] = v
        grp = f.create_group("shared")
        for k, enc in shared.items():
            write_array(grp, k, *enc)
            if g.error:
                raise g.error
        f.create_group("ranks")

    def _finish_file(self, f, g, tmp, path, need, err):
        """Close, fsync and move the file into place; the error (or None)."""
        try:
            try:
                if f is not None:
                    f.close()
            finally:
                if g is not None:
                    g.close()
            if g is not None and g.error and err is None:
                err = no_space(self.dir, need, exc=g.error)
            if err is None:
                fsync_path(tmp)
                os.replace(tmp, path)
                fsync_path(self.dir, directory=True)
                self._prune(self.algo.step_count)
                self.last_write = {"path": path, "bytes": os.path.getsize(path)}
        except Exception as exc:     # noqa: BLE001
            err = err or self._why(exc, need)
        return err

    def _why(self, exc, need):
        """One line for a failed write: the folder and the bytes for an OSError."""
        if isinstance(exc, OSError):
            return no_space(self.dir, need, exc=exc)
        return (str(exc).splitlines() or [type(exc).__name__])[0]

    def _write_rank(self, f, g, r, header, payload):
        grp = f["ranks"].create_group(str(r))
        for key, arr, kind, shape in unpack_arrays(header, payload):
            write_array(grp, key, arr, kind, shape)
            if g.error:       # the disk is full: stop, the file is removed
                raise g.error

    def _prune(self, step):
        """Keep the `keep_last` newest; drop checkpoints of an abandoned future
        (steps beyond this one, left by a run resumed from an older file)."""
        paths = list_checkpoints(self.dir)
        newer = [p for p in paths if step_of(p) > step]
        older = [p for p in paths if step_of(p) <= step]
        keep = self.cfg.checkpoint.keep_last
        drop = newer + (older[keep:] if keep else [])
        # temporary files of writes that a crash interrupted
        drop += [os.path.join(self.dir, n) for n in os.listdir(self.dir)
                 if n.startswith(".ckpt-") and n.endswith(".h5.tmp")]
        for p in drop:
            os.remove(p)
        if newer:
            self.log.say(f"mpidsgd: removed {len(newer)} checkpoint(s) beyond step {step} "
                         f"(an earlier run's future)")

    def _report(self, seconds, final):
        self.last_write["seconds"] = seconds
        mb = self.last_write.get("bytes", 0) / 1e6
        name = os.path.basename(self.last_write.get("path", ""))
        self.log.say(f"checkpoint {name}: {mb:.2f} MB in {seconds:.3f} s"
                     + (" (stopping)" if final else ""))
        self.log.record(kind="checkpoint", step=self.algo.step_count, path=self.last_write["path"],
                        bytes=self.last_write["bytes"], write_s=seconds)
