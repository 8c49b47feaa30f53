"""SparDL sparse allreduce with error feedback: Spar-Reduce-Scatter, optional
teams with Spar-All-Gather (B-SAG or R-SAG), the Bruck all-gather of the final
blocks, and global residual collection (docs/algorithms/sparse.md).

    sd = SparDL(n, np.float32, 0.01, channel=ch, teams=1, sag="bruck")
    sd.allreduce(g, out)      # out <- sparse mean over ALL ranks; sd.E updated

Per call and rank (d = 1): 2 k_b (P - 1) entries of (int32 index, value) in
2 ceil(log2 P) messages, k_b = max(1, floor(ceil(n / P) * density));
comm/costmodel.spardl gives the exact figures with teams too.

Residual E (raw gradient units, one per rank) re-enters as A = g + E. After
the step, off the final support every rank's E is its own g + E_old; on the
final support a rank keeps what it held and did not forward. The result
therefore conserves the gradient mass: sum_r E_new + P * out = sum_r (g + E_old).
"""
from __future__ import annotations

import numpy as np

from ..kernels import densify_blocks, restore_outside, topk_abs
from . import costmodel as cm
from .spar_allgather import block_allgather, bsag, next_h, rsag
from .spar_reduce_scatter import LazySum, spar_reduce_scatter

SAGS = ("bruck", "recursive")


def check_spardl(p: int, density: float, teams: int, sag: str):
    """None if the configuration is valid, else the problem as 'key: reason'."""
    if not 0 < density <= 1:
        return f"density: must be in (0, 1], got {density}"
    if teams < 1 or p % teams:
        return f"teams: {teams} must be >= 1 and divide the number of ranks {p}"
    if sag not in SAGS:
        return f"sag: must be one of {SAGS}, got {sag!r}"
    if sag == "recursive" and teams & (teams - 1):
        return f"sag: 'recursive' (R-SAG) needs a power-of-two number of teams, got {teams}"
    return None


class SparDL:
    """SparDL allreduce state on one rank: residual, B-SAG h, sub-channels.

    Collective constructor (it splits `channel` into the team and the SAG
    group when teams > 1). `batched=False` sends one block per SRS message
    (the reference form; same numbers, more messages). Works on NumPy or CuPy
    arrays of float32/float64 (`xp` defaults to the channel's backend).
    """

    name = "spardl"

    def __init__(self, n, dtype, density, *, channel, teams=1, sag="bruck", batched=True, xp=None):
        problem = check_spardl(channel.size, density, teams, sag)
        if problem:
            raise ValueError(problem)
        self.n, self.dtype = int(n), np.dtype(dtype)
        self.density, self.teams, self.sag, self.batched = float(density), int(teams), sag, batched
        self.channel, self.P = channel, channel.size
        self.p_team = self.P // self.teams
        self.c, self.k_b = cm.spardl_block(self.n, self.p_team, self.density)
        self.h_min = max(1, self.k_b // self.teams)
        self.h = self.h_min
        if self.teams == 1:
            self.team, self.group = channel, None
        else:
            self.team = channel.split(channel.rank // self.p_team)
            self.group = channel.split(channel.rank % self.p_team)
        self.r = self.team.rank
        self.xp = xp or channel.backend.xp
        self.E = self.xp.zeros(self.p_team * self.c, self.dtype)   # padding stays 0
        self.last = {}

    @classmethod
    def from_options(cls, n, dtype, opts, *, channel, xp=None):
        """Built from the [algo] options (density, teams, sag)."""
        return cls(n, dtype, opts.density, channel=channel, teams=opts.teams, sag=opts.sag,
                   xp=xp)

    # -- the allreduce --------------------------------------------------------------
    def allreduce(self, g, out=None):
        """out <- SparDL mean over all ranks of g (+ residual); E updated.

        g: n values (NumPy/CuPy, this object's dtype); out may be g itself.
        Collective over the channel. Returns out.
        """
        if g.shape != (self.n,) or g.dtype != self.dtype:
            raise ValueError(f"g must have shape ({self.n},) and dtype {self.dtype}")
        xp, E, n = self.xp, self.E, self.n
        # E becomes A = g + E_old in place, block by block on first use (fused
        # with the first selection where it can be: no separate dense pass)
        E[n:] = 0
        blocks = E.reshape(self.p_team, self.c)
        lazy = LazySum(blocks, g)
        log = {"srs": [], "sag": []}
        touched = []
        spar_reduce_scatter(blocks, self.k_b, channel=self.team, batched=self.batched,
                            log=log["srs"], touched=touched, lazy=lazy)
        lazy.finish()
        idx, val = self._own_block(blocks[self.r], log, touched)
        all_idx, all_val = block_allgather(idx, val, self.k_b, channel=self.team)
        # the final support, per block (block-local, ascending; -1 padding dropped)
        # (padding is at a row's end: one read-back of the last column decides
        # which rows need the filter, instead of one per row on a GPU)
        last = all_idx[:, -1].tolist() if all_idx.shape[1] else []
        sup = [row if row.size == 0 or last[b] >= 0 else row[row >= 0]
               for b, row in enumerate(all_idx)]
        self._collect_residual(blocks, sup, touched)
        if out is None:
            out = xp.empty(n, self.dtype)
        # out <- zeros with the gathered blocks / P, in one ordered pass
        densify_blocks(out, all_idx, all_val, self.c, self.P)
        self.last.update(selected=sum(int(s.size) for s in sup), srs_entries=log["srs"],
                         sag_entries=log["sag"], support=sup)
        return out

    def _own_block(self, block, log, touched):
        """Final selection of this rank's block: top-k_b (d = 1) or via SAG;
        what is not selected stays in `block` (this rank's residual there)."""
        if self.teams == 1:
            idx, val = topk_abs(block, self.k_b)
            block[idx] = 0
            touched.append((self.r, idx, val))
            return idx, val
        own = []
        if self.sag == "recursive":
            idx, val = rsag(block, self.k_b, channel=self.group, log=log["sag"], touched=own)
            touched.extend((self.r, i, v) for i, v in own)
            return idx, val
        h = self.h
        idx, val, U = bsag(block, h, self.k_b, channel=self.group, touched=own)
        touched.extend((self.r, i, v) for i, v in own)
        log["sag"].append(min(h, self.c) * (self.teams - 1))
        self.last.update(h=h, union=U)
        self.h = next_h(h, U, self.k_b, self.teams)
        return idx, val

    def _collect_residual(self, blocks, sup, touched):
        """Global residual collection: E_new = A0 = g + E_old, except on the
        final support, where it is what this rank held and did not forward
        (the final A there). A differs from A0 only at the sparse positions
        the step touched, whose values before each change are logged: off
        the support they are put back in reverse order (the earliest, A0,
        last); the support keeps what is held (no dense copy of A0 is ever
        made, and nothing is gathered). sup[b]: block b's final support. A
        forwarded selection (logged with old = None) was not zeroed when it
        left, the block's last change: on the support it is zeroed now, off
        it there is nothing to undo."""
        for b, idx, old in reversed(touched):
            if old is None:
                zeros = self.xp.zeros(idx.size, self.dtype)
                restore_outside(blocks[b], idx, zeros, sup[b], inside=True)
            else:
                restore_outside(blocks[b], idx, old, sup[b])

    # -- state ----------------------------------------------------------------------
    def support(self, padded=False):
        """Indices (ascending) of the last call's final support: into the
        unpadded n, or with `padded` into the padded P'c (padding included)."""
        s = self.last.get("support")
        if s is None:
            return None
        xp = self.xp
        g = xp.concatenate([row.astype(xp.int64) + b * self.c for b, row in enumerate(s)])
        return g if padded else g[g < self.n]

    def residual(self):
        """This rank's residual, unpadded: a view, updated in place by every
        allreduce."""
        return self.E[:self.n]

    def predicted(self):
        """(bytes, messages) comm/costmodel predicts for this rank's last call."""
        return cm.spardl(self.n, self.dtype.itemsize, self.P, self.density, teams=self.teams,
                         sag=self.sag, h=self.last.get("h"), batched=self.batched)

    def reset(self):
        """Fresh state (a resume at another world size): zero residual, B-SAG
        h at its start value."""
        self.E.fill(0)
        self.h = self.h_min

    def state_dict(self) -> dict:
        """Per-rank state under its checkpoint names: the residual (a view,
        as residual()) and this rank's SAG group's h."""
        return {"residual": self.E[:self.n], "sag_h": int(self.h)}

    def load_state_dict(self, state: dict):
        res = self.xp.asarray(state["residual"])
        if res.shape != (self.n,):
            raise ValueError(f"residual has shape {res.shape}, expected ({self.n},)")
        self.E[:self.n] = res
        self.E[self.n:] = 0
        # a resume with another density keeps h inside its valid range
        self.h = min(max(int(state["sag_h"]), self.h_min), self.k_b)

    def summary(self) -> dict:
        """Fields for summary.json; traffic per sparse step as costmodel
        predicts it (B-SAG with the start value of h)."""
        nbytes, msgs = cm.spardl(self.n, self.dtype.itemsize, self.P, self.density,
                                 teams=self.teams, sag=self.sag)
        out = {"density": self.density, "teams": self.teams, "sag": self.sag, "k_b": self.k_b,
               "block_len": self.c, "k": self.k_b * self.p_team,
               "predicted_bytes_per_step": nbytes, "predicted_messages_per_step": msgs}
        if self.teams > 1 and self.sag == "bruck":
            out["sag_h"] = self.h    # this rank's group; the start value is max(1, k_b // d)
        return out

    def free(self):
        """Release the team and group communicators (collective)."""
        if self.group is not None:
            self.team.comm.Free()
            self.group.comm.Free()
            self.team = self.group = None
