"""The resume half of CheckpointManager (a mixin; the manager holds cfg, topo,
algo, shard, backend, meter, channels and the log).

Rank 0 picks a file and checks what the file alone can tell (attributes,
algorithm, world size, model section and layout, the groups every rank needs);
it then broadcasts the shared state and sends each rank its own. Every rank
checks every value it received against its live state (schema.py)
before loading anything, so a bad field is one line on every rank, exit 2.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..comm.agree import agreed
from ..errors import CheckpointError, ConfigError
from .format import (FORMAT_VERSION, flatten, list_checkpoints, pack, read_group, sub,
                     unflatten, unpack, verify)
from .migrate import to_current
from .schema import (attribute_rules, check, check_local, check_model, data0_rules, local_rules,
                     template)
from .transfer import TAG, bcast_bytes, recv_packed, send_packed


class Resume:
    """resume() and its helpers; mixed into CheckpointManager."""

    def resume(self, arg: str) -> int | None:
        """Collective: restore from `arg` ("auto" or a file). Returns the step
        resumed from, or None (auto found nothing: a fresh start). Raises the
        same CheckpointError on every rank when the file cannot be used."""
        meta = agreed(self.topo.world, lambda: self._choose(arg) if self.topo.is_root else None,
                      error=CheckpointError)
        with self.main.phase("checkpoint"), self.ch.phase("checkpoint"):
            mine = json.dumps(meta).encode() if meta else b""
            meta = json.loads(bcast_bytes(self.ch, mine, self.topo.is_root))
            if meta.get("path") is None:
                self.log.say(f"mpidsgd: no valid checkpoint in {self.dir}; starting from step 0")
                if hasattr(self.log, "rewind"):
                    self.log.rewind(0)      # records of a run that left no checkpoint
                return None
            shared, local = self._distribute(meta)
        agreed(self.topo.world, lambda: self._apply(meta, shared, local), error=CheckpointError)
        self.last_step = self.algo.step_count
        if hasattr(self.log, "rewind"):
            self.log.rewind(self.algo.step_count)
        self.log.say(f"mpidsgd: resumed from {meta['path']} at step {self.algo.step_count}")
        return self.algo.step_count

    def _choose(self, arg):
        """Rank 0: the file to use and what the other ranks must know."""
        try:
            return self._pick(arg)
        except CheckpointError:
            raise
        except (KeyError, OSError, ValueError, TypeError, AttributeError) as exc:
            # a file that verifies but lacks what a checkpoint must have
            raise CheckpointError(f"--resume {arg}: not a usable checkpoint: {exc!r}") from None

    def _pick(self, arg):
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
        cfg, where = self.cfg, f"checkpoint {path}"
        check(attrs, attribute_rules(cfg, self.algo, FORMAT_VERSION), where, "attribute ",
              exact_keys=False)
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
        check_model(where, attrs, cfg, self.algo.model)
        with h5py.File(path, "r") as f:
            self._check_groups(f, where, saved_p)
            data0 = read_group(f["ranks/0/data"])
        check(data0, data0_rules(), where, "/ranks/0/data/", exact_keys=False)
        data0 = {k: int(data0[k]) for k in data0_rules()}
        if data0["pos"] >= data0["steps_per_epoch"]:
            raise CheckpointError(f"{where}: /ranks/0/data/pos is {data0['pos']}, past the "
                                  f"{data0['steps_per_epoch']} steps of an epoch")
        version = int(attrs["format_version"])
        if version < FORMAT_VERSION:
            self.log.say(f"mpidsgd: {where} has format version {version}; reading it as "
                         f"version {FORMAT_VERSION} (optimizer state moves to nested keys)")
        return {"path": path, "reshard": reshard, "saved_world_size": saved_p,
                "step": int(attrs["step"]), "data0": data0, "version": version}

    @staticmethod
    def _check_groups(f, where, saved_p):
        """The groups the transfer reads: /shared and /ranks/0 .. P-1 with data."""
        import h5py
        need = ["shared"] + [f"ranks/{r}" for r in range(saved_p)] + ["ranks/0/data"]
        for name in need:
            if not isinstance(f.get(name), h5py.Group):
                raise CheckpointError(f"{where}: /{name} is missing or not a group")
        names = sorted(f["ranks"])
        if names != sorted(str(r) for r in range(saved_p)):
            raise CheckpointError(f"{where}: /ranks holds {names[:8]}, expected 0 .. {saved_p - 1}")

    def _distribute(self, meta):
        """Shared state to everyone; /ranks/<r> to rank r (same world size)."""
        import h5py
        f = h5py.File(meta["path"], "r") if self.topo.is_root else None
        try:
            if f is not None:
                header, payload = pack(to_current(read_group(f["shared"]), meta["version"],
                                                  "shared"))
                blob = len(header).to_bytes(8, "little") + header + payload.tobytes()
            else:
                blob = b""
            blob = bcast_bytes(self.ch, blob, self.topo.is_root)
            hl = int.from_bytes(blob[:8], "little")
            shared = unpack(blob[8:8 + hl], np.frombuffer(blob[8 + hl:], np.uint8))
            if meta["reshard"]:
                return shared, None
            if f is not None:
                for r in range(1, self.topo.size):
                    header, payload = pack(to_current(read_group(f[f"ranks/{r}"]),
                                                      meta["version"], "rank"))
                    self.ch.Send(np.array([len(header), payload.size], np.int64), r, TAG)
                    send_packed(self.ch, r, header, payload)
                local = to_current(read_group(f["ranks/0"]), meta["version"], "rank")
            else:
                n = np.empty(2, np.int64)
                self.ch.Recv(n, 0, TAG)
                header, payload = recv_packed(self.ch, 0, n[0], n[1])
                local = unpack(header, payload)
            return shared, local
        finally:
            if f is not None:
                f.close()

    def _check_state(self, meta, shared, local):
        """Every value against the live run, before anything is loaded."""
        where, asnp = f"checkpoint {meta['path']}", self.backend.asnumpy
        live = self.algo.state_dict()
        rules = {k: template(v, k, asnp) for k, v in flatten(live["shared"]).items()}
        check(shared, rules, where, "/shared/")
        if self.algo.synchronous and "step" in shared and shared["step"] != meta["step"]:
            raise CheckpointError(f"{where}: /shared/step is {shared['step']}, the step "
                                  f"attribute says {meta['step']}")
        if local is None:
            return
        step = local.get("algo/step", shared.get("step", meta["step"]))
        rules = local_rules(self.local_state(live["local"]), self.shard, asnp)
        check_local(where, local, rules, self.topo.rank, step if isinstance(step, int) else 0)

    def _apply(self, meta, shared, local):
        """Every rank: check, then load what it received into the live objects
        (a value that does not fit is a CheckpointError naming the file)."""
        try:
            self._load(meta, shared, local)
        except CheckpointError:
            raise
        except (ConfigError, KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {meta['path']} does not fit this run: {exc}") from None

    def _load(self, meta, shared, local):
        """Check every value, then load it into the live objects."""
        algo = self.algo
        self._check_state(meta, shared, local)
        if meta["reshard"]:
            algo.load_state_dict({"shared": unflatten(shared), "local": {}}, reshard=True)
            self._reshard_data(meta["data0"])
            self.log.say(
                f"mpidsgd: warning: checkpoint written by {meta['saved_world_size']} ranks, "
                f"resuming on {self.topo.size} (checkpoint.allow_reshard): shared state restored, "
                f"per-rank state (algorithm residuals/local state, model buffers, byte counters, running loss) "
                f"reset; data resumes in epoch {self.shard.epoch} at the same fraction of the epoch")
            return
        algo.load_state_dict({"shared": unflatten(shared), "local": unflatten(sub(local, "algo"))})
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
