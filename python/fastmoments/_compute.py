"""``compute``: the front door. It checks the arguments and hands the data to the door its
route table names (``_routes``); anything no route claims is an in-memory array."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import numpy as np

from ._array import array_moments
from ._axes import AxisLike
from ._checks import (ComputeOptions, as_array, check_ddof, check_device, check_nan_policy,
                      check_on_error, check_recursive, check_sample, check_threads,
                      default_threads, split_masked)
from ._moments import Moments
from ._routes import find_route, is_dask_collection, is_stream_source

__all__ = ["compute", "default_threads"]


def compute(data: Any, axis: AxisLike = -1, *, weights: Any = None, where: Any = None, ddof: int = 0, nan_policy: str = "propagate",
            threads: Optional[int] = None,
            progress: Union[bool, Callable[[int, int], Any]] = False,
            device: str = "auto", sample: Optional[Union[float, int]] = None,
            sample_seed: Optional[int] = None, dtype: Any = None,
            shape: Optional[Tuple[int, ...]] = None, recursive: bool = False,
            on_error: str = "raise") -> Moments:
    """Per-feature count, mean and variance in one pass, exactly and at memory bandwidth.

    Parameters
    ----------
    data : array_like, np.memmap, path, folder, list of paths, h5py/zarr array, dask array, GPU array
        Any NumPy array (any strides, byte order, read-only), a memory map, the path of a
        ``.npy`` file (streamed, never loaded whole), or anything ``np.asarray`` accepts.
        Also streamed with bounded memory: ``"a.npz::name"`` (or ``"a.npz"`` holding one
        array), raw binary files with ``dtype=``/``shape=``, a list of paths or a glob such as
        ``"vol_*.npy"`` (concatenated along axis 0), h5py datasets and zarr arrays.
        NIfTI-1/2 volumes (``.nii``, ``.nii.gz``; nibabel; scaled by ``scl_slope``/``scl_inter``
        as ``img.dataobj`` is) and PNG/JPEG/TIFF images (Pillow; channels last, grayscale as one
        channel) need ``pip install 'fastmoments[imaging]'``. Each such file is one sample: a
        volume of shape (X, Y, Z) reads as (1, X, Y, Z), an image as (1, H, W, C), so a folder of
        N of them is their stack (N, ...), concatenated along axis 0 like ``.npy`` lists and
        mixable with them. A folder means the files in it with those suffixes (sorted by
        name). Files are decoded on all cores, at most ``2 * threads`` in flight, merged in
        file order. Reduced axes may differ in size between files (images of several sizes
        with ``axis=-1``); kept axes must agree.
        Dtypes: bool, (u)int8-64, float16, bfloat16 (``ml_dtypes``), float32, float64.
    axis : None, int or tuple of ints, default -1
        Axes that keep separate statistics, as in ``keras.layers.Normalization``; all other axes
        are reduced. ``None`` reduces everything.
    ddof : int, default 0
        Delta degrees of freedom of :attr:`Moments.variance`.
    nan_policy : {"propagate", "omit", "raise"}
        NaN handling: like ``np.var``, like ``np.nanvar`` (per-index counts), or ``ValueError``.
    threads : int, optional
        Threads to use; default ``OMP_NUM_THREADS`` or the CPUs this process may use. The result
        is bitwise identical for every thread count.
    progress : bool or callable
        ``True`` shows a progress bar; a callable receives ``(done_bytes, total_bytes)``.
    device : {"auto", "cpu", "cuda"}
        Where to compute; ``auto`` uses the GPU for GPU arrays and the CPU otherwise.
    sample, sample_seed :
        Fraction (< 1) or number of rows to read for an approximate answer on huge files.
    dtype, shape :
        Element type and shape of a raw binary file given as ``data``.
    recursive : bool, default False
        A folder in ``data`` also contributes the files of its sub-folders.
    on_error : {"raise", "skip"}
        A file that cannot be read or decoded raises ``ValueError`` naming it (nothing is left
        running), or, with "skip", is left out and listed in the result's ``skipped`` as
        ``(path, reason)`` pairs.

    weights : array_like, optional
        Non-negative finite weights broadcastable to ``data`` (NumPy rules), as ``np.average``'s;
        a 1-D vector of length ``data.shape[0]`` weights the rows (axis 0). Mean
        ``sum(w*x)/sum(w)``, ``m2 = sum(w*(x - mean)**2)``, :attr:`Moments.variance`
        ``m2 / (sum(w) - ddof)`` (frequency weights) and :attr:`Moments.reliability_variance`
        (``np.cov``'s ``aweights``); ``count`` is the number of values of positive weight. A
        value of weight 0 does not exist for the statistics (even NaN or inf). Negative, NaN or
        infinite weights raise ``ValueError``. In-memory arrays, memory maps, files and Dask
        arrays. With files (a list or glob concatenated along axis 0), ``weights`` and ``where``
        may be arrays or paths of ``.npy`` files, read beside the data block by block (bounded
        memory): a 1-D per-row vector of the total number of rows, or the data's full shape.
    where : array_like of bool, optional
        NumPy's ``where=`` (``np.mean(x, where=m)``): only values where the mask is True count;
        per-index counts as under ``nan_policy="omit"``. An index with no value left (or whose
        weights sum to 0) has NaN statistics and its variance warns. A ``numpy.ma.MaskedArray``
        is read as its data with ``where=~mask``.

    Returns
    -------
    Moments
        ``count``, ``mean``, ``variance``, ``std`` and ``m2`` with the shape of the kept axes;
        ``skipped`` lists files left out under ``on_error="skip"`` (empty otherwise).

    Examples
    --------
    >>> import numpy as np, fastmoments
    >>> x = np.arange(12, dtype=np.float32).reshape(4, 3)
    >>> r = fastmoments.compute(x, axis=-1)
    >>> r.mean
    array([4.5, 5.5, 6.5])
    >>> float(fastmoments.compute(x, axis=None).variance)
    11.916666666666666
    """
    check_sample(sample)
    data, where = split_masked(data, where)
    opts = ComputeOptions(axis=axis, ddof=check_ddof(ddof), nan_policy=check_nan_policy(nan_policy),
                          threads=check_threads(threads), progress=progress, device=check_device(device),
                          sample=sample, sample_seed=sample_seed, dtype=dtype,
                          shape=None if shape is None else tuple(shape),
                          recursive=check_recursive(recursive), on_error=check_on_error(on_error),
                          weights=weights, where=where)
    weighted = weights is not None or where is not None
    if weighted and isinstance(data, np.ndarray) and device != "cuda":
        # A memory map is read in place by the CPU kernel, its weights alongside.
        if sample is not None or dtype is not None or shape is not None:
            raise ValueError("sample=, dtype= and shape= apply to files, not to in-memory arrays")
        return array_moments(data, opts)
    route = find_route(data, device)
    if weighted and route is not None and not (is_dask_collection(data) or is_stream_source(data)):
        raise ValueError(f"weights= and where= are supported for NumPy arrays, memory maps, files "
                         f"and Dask arrays; not yet for {type(data).__name__} inputs")
    if route is not None:
        return route(data, opts)
    if sample is not None or dtype is not None or shape is not None:
        raise ValueError("sample=, dtype= and shape= apply to files, not to in-memory arrays")
    if recursive or on_error != "raise":
        raise ValueError("recursive= and on_error= apply to files and folders, not to in-memory arrays")
    return array_moments(as_array(data), opts)
