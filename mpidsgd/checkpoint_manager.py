"""CheckpointManager: the collective save and resume that train.py drives.

save():   every rank packs its per-rank state; rank 0 gathers it over a private
          communicator (phase "checkpoint") and writes one HDF5 file atomically.
resume(): rank 0 picks and validates a file, broadcasts the shared state and
          sends each rank its own; every rank checks what it got against its
          live state, and any problem becomes the same one-line error everywhere.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import time

import numpy as np

from . import __version__
from . import config as C
from .checkpoint import (CHUNK, FORMAT, FORMAT_VERSION, TAG, AgreedError, CheckpointError,
                         encode, flatten, fsync_path, list_checkpoints, read_group, step_of,
                         sub, unpack, unpack_arrays, pack, verify, write_array)
from .comm.channel import agree_error


class CheckpointManager:
    """Collective checkpoint writer/reader for one run (see module doc)."""

    def __init__(self, cfg, topo, ctx, log):
        self.cfg, self.topo, self.log = cfg, topo, log
        self.algo, self.shard = ctx["algo"], ctx["data"].train
        self.backend, self.meter = ctx["backend"], ctx.get("meter")
        self.main = ctx["channel"]
        # a private communicator: our point-to-point traffic can never be
        # matched by an algorithm's wildcard receive
        self.ch = self.main.split(0)
        self.dir = cfg.checkpoint.dir or os.path.join(cfg.run.out_dir, "checkpoints")
        self.every = cfg.checkpoint.every
        self.last_step = 0           # step of the newest checkpoint written or resumed
        self.last_write = {}         # seconds, bytes, path of the newest write

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
                self._send(header, payload)
                err = None
        err = agree_error(self.topo.world, err)
        if err:
            raise AgreedError(err)
        self.last_step = self.algo.step_count
        if self.topo.is_root:
            self._report(time.perf_counter() - t0, final)

    def _newest_name(self):
        return f"ckpt-{self.last_step}.h5" if self.last_step else "none yet"

    def _send(self, header, payload):
        self.ch.Send(np.frombuffer(header, np.uint8), 0, TAG)
        for a in range(0, payload.size, CHUNK):
            self.ch.Send(payload[a:a + CHUNK], 0, TAG)

    def _recv(self, r, sizes):
        header = np.empty(int(sizes[r, 0]), np.uint8)
        self.ch.Recv(header, r, TAG)
        payload = np.empty(int(sizes[r, 1]), np.uint8)
        for a in range(0, payload.size, CHUNK):
            self.ch.Recv(payload[a:a + CHUNK], r, TAG)
        return header.tobytes(), payload

    def _write_root(self, shared, header, payload, sizes, asnp):
        """Rank 0: write the file; always drain every rank's messages, so a
        failing disk gives an error, never a hang. Returns an error or None."""
        import h5py
        step = self.algo.step_count
        path = os.path.join(self.dir, f"ckpt-{step}.h5")
        tmp = os.path.join(self.dir, f".ckpt-{step}.h5.tmp")
        err, f = None, None
        try:
            os.makedirs(self.dir, exist_ok=True)
            f = h5py.File(tmp, "w")
            for k, v in self.attributes().items():
                f.attrs[k] = v
            g = f.create_group("shared")
            for k, v in flatten(shared).items():
                write_array(g, k, *encode(v, asnp))
            f.create_group("ranks")
            self._write_rank(f, 0, header, payload)
            f.flush()
            if self.cfg.debug.slow_checkpoint_s > 0:    # testing aid: a write to kill
                time.sleep(self.cfg.debug.slow_checkpoint_s)
        except Exception as exc:
            err = f"cannot write checkpoint {path}: {exc}"
        for r in range(1, self.topo.size):
            h, p = self._recv(r, sizes)
            if err is None:
                try:
                    self._write_rank(f, r, h, p)
                except Exception as exc:
                    err = f"cannot write checkpoint {path}: {exc}"
        try:
            if f is not None:
                f.close()
            if err is None:
                fsync_path(tmp)
                os.replace(tmp, path)
                fsync_path(self.dir, directory=True)
                self._prune(step)
                self.last_write = {"path": path, "bytes": os.path.getsize(path)}
        except Exception as exc:
            err = err or f"cannot write checkpoint {path}: {exc}"
        return err

    def _write_rank(self, f, r, header, payload):
        g = f["ranks"].create_group(str(r))
        for key, arr, kind, shape in unpack_arrays(header, payload):
            write_array(g, key, arr, kind, shape)

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

    # -- resume -----------------------------------------------------------------------
    def resume(self, arg: str) -> int | None:
        """Collective: restore from `arg` ("auto" or a file). Returns the step
        resumed from, or None (auto found nothing: a fresh start). Raises the
        same CheckpointError on every rank when the file cannot be used."""
        meta, err = None, None
        if self.topo.is_root:
            try:
                meta = self._choose(arg)
            except CheckpointError as exc:
                err = str(exc)
            except (KeyError, OSError, ValueError, TypeError) as exc:
                # a file that verifies but lacks what a checkpoint must have
                err = f"--resume {arg}: not a usable checkpoint: {exc!r}"
        err = agree_error(self.topo.world, err)
        if err:
            raise CheckpointError(err)
        with self.main.phase("checkpoint"), self.ch.phase("checkpoint"):
            meta = json.loads(self._bcast_bytes(json.dumps(meta).encode() if meta else b""))
            if meta.get("path") is None:
                self.log.say(f"mpidsgd: no valid checkpoint in {self.dir}; starting from step 0")
                if hasattr(self.log, "rewind"):
                    self.log.rewind(0)      # records of a run that left no checkpoint
                return None
            shared, local = self._distribute(meta)
        err = None
        try:
            self._apply(meta, shared, local)
        except (ConfigError_, KeyError, ValueError, TypeError) as exc:
            err = f"checkpoint {meta['path']} does not fit this run: {exc}"
        err = agree_error(self.topo.world, err)
        if err:
            raise CheckpointError(err)
        self.last_step = self.algo.step_count
        if hasattr(self.log, "rewind"):
            self.log.rewind(self.algo.step_count)
        self.log.say(f"mpidsgd: resumed from {meta['path']} at step {self.algo.step_count}")
        return self.algo.step_count

    def _choose(self, arg):
        """Rank 0: the file to use and what the other ranks must know."""
        if arg == "auto":
            for path in list_checkpoints(self.dir):
                attrs, _, problems = verify(path)
                if not problems:
                    return self._meta(path, attrs)
                self.log.say(f"mpidsgd: warning: skipping damaged checkpoint {path}: {problems[0]}")
            return {"path": None}
        if not os.path.isfile(arg):
            raise CheckpointError(f"--resume {arg}: no such checkpoint file")
        attrs, _, problems = verify(arg)
        if problems:
            raise CheckpointError(f"--resume {arg}: damaged checkpoint: {problems[0]}")
        return self._meta(arg, attrs)

    def _meta(self, path, attrs):
        """Compatibility checks that rank 0 can make from the file alone."""
        import h5py
        cfg = self.cfg
        if attrs["algorithm"] != cfg.algo.name:
            raise CheckpointError(f"checkpoint {path} was written by algorithm "
                                  f"{attrs['algorithm']!r}; this run uses algo.name = {cfg.algo.name!r}")
        saved_p, p = int(attrs["world_size"]), self.topo.size
        reshard = saved_p != p
        if reshard and not cfg.checkpoint.allow_reshard:
            raise CheckpointError(
                f"checkpoint {path} was written by {saved_p} ranks, this run has {p}: per-rank "
                f"state cannot be mapped; set checkpoint.allow_reshard = true to restore the "
                f"shared state and reset the per-rank state")
        with h5py.File(path, "r") as f:
            live = flatten(self.algo.state_dict()["shared"])
            check_like(live, f["shared"], "shared")
            data0 = read_group(f["ranks/0/data"])
        return {"path": path, "reshard": reshard, "saved_world_size": saved_p,
                "step": int(attrs["step"]),
                "data0": {k: int(v) for k, v in data0.items()}}

    def _bcast_bytes(self, data: bytes) -> bytes:
        n = np.array([len(data)], np.int64)
        self.ch.Bcast(n)
        buf = np.frombuffer(data, np.uint8).copy() if self.topo.is_root else np.empty(int(n[0]), np.uint8)
        for a in range(0, buf.size, CHUNK):
            self.ch.Bcast(buf[a:a + CHUNK])
        return buf.tobytes()

    def _distribute(self, meta):
        """Shared state to everyone; /ranks/<r> to rank r (same world size)."""
        import h5py
        f = h5py.File(meta["path"], "r") if self.topo.is_root else None
        try:
            if f is not None:
                header, payload = pack(read_group(f["shared"]))
                blob = len(header).to_bytes(8, "little") + header + payload.tobytes()
            else:
                blob = b""
            blob = self._bcast_bytes(blob)
            hl = int.from_bytes(blob[:8], "little")
            shared = unpack(blob[8:8 + hl], np.frombuffer(blob[8 + hl:], np.uint8))
            if meta["reshard"]:
                return shared, None
            if f is not None:
                for r in range(1, self.topo.size):
                    header, payload = pack(read_group(f[f"ranks/{r}"]))
                    self.ch.Send(np.array([len(header), payload.size], np.int64), r, TAG)
                    self._send_to(r, header, payload)
                local = read_group(f["ranks/0"])
            else:
                n = np.empty(2, np.int64)
                self.ch.Recv(n, 0, TAG)
                header, payload = self._recv_from(0, n)
                local = unpack(header, payload)
            return shared, local
        finally:
            if f is not None:
                f.close()

    def _send_to(self, r, header, payload):
        self.ch.Send(np.frombuffer(header, np.uint8), r, TAG)
        for a in range(0, payload.size, CHUNK):
            self.ch.Send(payload[a:a + CHUNK], r, TAG)

    def _recv_from(self, r, n):
        header = np.empty(int(n[0]), np.uint8)
        self.ch.Recv(header, r, TAG)
        payload = np.empty(int(n[1]), np.uint8)
        for a in range(0, payload.size, CHUNK):
            self.ch.Recv(payload[a:a + CHUNK], r, TAG)
        return header.tobytes(), payload

    def _apply(self, meta, shared, local):
        """Every rank: load what it received into the live objects."""
        algo = self.algo
        if meta["reshard"]:
            algo.load_state_dict({"shared": shared, "local": {}}, reshard=True)
            self._reshard_data(meta["data0"])
            self.log.say(
                f"mpidsgd: warning: checkpoint written by {meta['saved_world_size']} ranks, "
                f"resuming on {self.topo.size} (checkpoint.allow_reshard): shared state restored, "
                f"per-rank state (algorithm residuals/local state, model buffers, byte counters, running loss) "
                f"reset; data resumes in epoch {self.shard.epoch} at the same fraction of the epoch")
            return
        algo_local = sub(local, "algo")
        check_like(flatten(algo.state_dict()["local"]), algo_local, "local")
        check_like(algo.model.state_dict(), sub(local, "model"), "model")
        algo.load_state_dict({"shared": unflatten(shared), "local": unflatten(algo_local)})
        algo.model.load_state_dict(sub(local, "model"))     # e.g. BatchNorm statistics
        self.shard.load_state_dict(sub(local, "data"))
        self.main.counters.load({p: list(v) for p, v in sub(local, "comm").items()})
        if self.meter is not None:
            self.meter.load_state_dict(sub(local, "train"))

    def _reshard_data(self, d0):
        """The shard layout changed: keep the epoch, map the position within it."""
        spe = self.shard.steps_per_epoch
        pos = math.floor(d0["pos"] * spe / max(d0["steps_per_epoch"], 1))
        self.shard.epoch, self.shard.pos = d0["epoch"], min(pos, spe - 1)


ConfigError_ = C.ConfigError


def unflatten(flat: dict) -> dict:
    """{"a/b": v} -> {"a": {"b": v}} (the inverse of flatten)."""
    out = {}
    for key, v in flat.items():
        node, parts = out, key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def check_like(live: dict, saved, where: str):
    """Same keys, and arrays of the same shape and dtype (model, dtype, options)."""
    if hasattr(saved, "visititems"):      # an h5py group: look without reading
        meta = {}
        saved.visititems(lambda n, o: meta.__setitem__(n, o) if hasattr(o, "dtype") else None)
        shapes = {k: (tuple(int(s) for s in o.attrs["shape"]) if "shape" in o.attrs else o.shape,
                      o.dtype, str(o.attrs.get("kind", "array"))) for k, o in meta.items()}
    else:
        shapes = {k: (np.shape(v), np.asarray(v).dtype, "array" if isinstance(v, np.ndarray) else "")
                  for k, v in saved.items()}
    missing = sorted(set(live) - set(shapes))
    extra = sorted(set(shapes) - set(live))
    if missing or extra:
        raise CheckpointError(f"{where} state differs: missing {missing}, unexpected {extra} "
                              f"(different algorithm options or version?)")
    for k, v in live.items():
        if not hasattr(v, "shape") or np.ndim(v) == 0 or shapes[k][2] != "array":
            continue
        shape, dtype, _ = shapes[k]
        if tuple(v.shape) != tuple(shape):
            raise CheckpointError(f"{where}/{k} has shape {tuple(shape)} in the checkpoint, "
                                  f"{tuple(v.shape)} in this run (different model or world size?)")
        if np.dtype(v.dtype) != np.dtype(dtype):
            raise CheckpointError(f"{where}/{k} is {np.dtype(dtype)} in the checkpoint, "
                                  f"{np.dtype(v.dtype)} in this run (run.dtype differs)")
