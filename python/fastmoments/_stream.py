"""Files and chunked stores (issue 4 replaces this with the streaming reader)."""

from __future__ import annotations

import os

from ._compute import compute_array, load_npy
from ._routes import ComputeOptions


def compute(data, opts: ComputeOptions):
    if isinstance(data, (str, os.PathLike)) and opts.dtype is None and opts.shape is None \
            and opts.sample is None:
        return compute_array(load_npy(data), opts)
    raise TypeError(f"fastmoments cannot read {type(data).__name__} sources yet")
