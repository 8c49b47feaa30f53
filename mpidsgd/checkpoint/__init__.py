"""HDF5 checkpoints: atomic writes, exact resume, `python -m mpidsgd.checkpoint info FILE`.

    format.py    the file: HDF5 layout, encoding of values, verify, info
    schema.py    what a checkpoint may hold: every value checked before loading
    transfer.py  the chunked point-to-point and broadcast of packed state
    disk.py      disk safety: free space, guarded writes, whole-line appends
    manager.py   CheckpointManager: the collective save (and resume.py: resume)
    __main__.py  `python -m mpidsgd.checkpoint info FILE`

Import from the module that holds a name; only manager.py needs MPI.
"""
