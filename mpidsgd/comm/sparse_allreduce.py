"""The sparse allreduces with error feedback, by name.

Every entry is a class holding one rank's state for repeated calls, with
one interface (algorithms/sparse.py drives them all the same way):

    c = COLLECTIVES[name].from_options(n, dtype, opts, channel=ch)
    c.allreduce(g, out)        # out <- sparse mean over all ranks of g + E
    c.residual()               # this rank's residual E (a view)
    c.state_dict()             # per-rank state under its checkpoint names
    c.load_state_dict(state)   # ... and back
    c.reset()                  # fresh state (resume at another world size)
    c.summary()                # fields for summary.json

`opts` is any object with the collective's option attributes (the [algo]
options). `density` means one thing for all of them: the share of entries a
top-k selection keeps, k = costmodel.select_count(L, density) of the L it
selects from (the one rounding rule). TopkA, gTop-k and Ok-Topk select from
the whole vector (L = n); SparDL from each of its P/teams blocks (L = c =
ceil(n * teams / P)), so it too keeps about n * density entries of a rank's
vector in all.
"""
from __future__ import annotations

from .gtopk import GTopk
from .oktopk import OkTopk
from .spardl import SparDL
from .topka import TopkA

COLLECTIVES = {cls.name: cls for cls in (TopkA, GTopk, SparDL, OkTopk)}


def build_collective(name, n, dtype, opts, *, channel, xp=None):
    """The sparse allreduce registered as `name`, built from `opts`."""
    if name not in COLLECTIVES:
        raise ValueError(f"no sparse collective {name!r}; known: {', '.join(COLLECTIVES)}")
    return COLLECTIVES[name].from_options(n, dtype, opts, channel=channel, xp=xp)
