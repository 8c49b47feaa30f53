"""Reading checkpoints of an older format version.

Version 1 stored an optimizer's state in its owner's section under a
hand-written prefix: `/shared/momentum_buf` (sgd and the sparse family),
`/shared/outer_momentum_buf` and `/ranks/<r>/algo/inner_adam_m` (local SGD,
DiLoCo, PALSGD), `/ranks/<r>/algo/opt_adam_t` (gosgd, easgd). Version 2
nests each optimizer's own state dict under its owner's name:
`/shared/opt/momentum_buf`, `/shared/outer/momentum_buf`,
`/ranks/<r>/algo/inner/adam_m`, `/ranks/<r>/algo/opt/adam_t`. Nothing else
changed, so a version-1 file is read by renaming those keys (`to_current`)
as rank 0 reads it, before any value is checked or sent to another rank.
"""
from __future__ import annotations

import re

# every name an optimizer's state_dict() holds (optim.SGD, optim.AdamW)
OPTIMIZER_KEYS = ("momentum_buf", "adam_m", "adam_v", "adam_t")
# version 1: [owner prefix]<optimizer key>, directly in a section
V1_OPTIMIZER = re.compile(r"^(inner_|outer_|opt_)?(" + "|".join(OPTIMIZER_KEYS) + r")$")


def v1_path(key: str) -> str:
    """The version-2 path of a key of a version-1 algorithm section
    (/shared, or /ranks/<r>/algo without that prefix)."""
    m = V1_OPTIMIZER.match(key)
    if m is None:
        return key
    # an unprefixed optimizer key belonged to the algorithm's one optimizer
    owner = (m.group(1) or "opt_")[:-1]
    return f"{owner}/{m.group(2)}"


def to_current(flat: dict, version: int, section: str) -> dict:
    """`flat` (a group read by format.read_group) as this version stores it.

    section: "shared" for /shared, "rank" for /ranks/<r> (whose algorithm
    state lies under "algo/"). Files of the current version pass unchanged.
    """
    if version >= 2:
        return flat
    if section == "shared":
        return {v1_path(k): v for k, v in flat.items()}
    out = {}
    for key, value in flat.items():
        if key.startswith("algo/"):
            key = "algo/" + v1_path(key[len("algo/"):])
        out[key] = value
    return out
