"""Coverage-guided fuzz target (atheris) for fastmoments' file planning (issue 17).

Each input becomes a file that ``fastmoments.compute`` plans and reads in-process: ``.npy`` and
``.npz`` headers (NumPy's header parser and fastmoments' checks), zip local headers, raw files
with ``dtype=``/``shape=``, and sample plans. fastmoments and the Python code that parses the
headers (``numpy.lib`` format, ``zipfile``) are instrumented for coverage; the compiled reader is
exercised but not instrumented (the sanitizer build covers it).

The input layout (kind of file, door, sample plan, raw dtype=/shape=) is in fuzz/input_layout.py;
fuzz/make_seeds.py writes the seed corpus fuzz/corpus/ from tests/untrusted_corpus.py.

A finding is a crash (signal), a hang (-timeout), memory over -rss_limit_mb, an exception other
than ValueError/TypeError/OSError, an error about a corrupt file that does not name it, or a
result that disagrees with NumPy (``np.load``) on a ``.npy`` file both accept.

Run:  python fuzz/fuzz_files.py fuzz/corpus -max_total_time=60 -timeout=10 -rss_limit_mb=2048
Set FASTMOMENTS_FUZZ_SKIP_KNOWN=1 to fuzz past the findings open at the time of writing (issue
17): inputs whose header shape has a negative size or a product past int64 (rows 1-2) are
skipped, and so are compressed members whose header promises more than the member holds;
any exception raised inside zipfile (BadZipFile, OSError, IndexError, UnicodeDecodeError), a
MemoryError from NumPy's literal_eval of a deeply nested header, row 8's "need at least one
array to concatenate", or a dtype TypeError that does not name the file, is accepted.
"""

from __future__ import annotations

import ast
import io
import os
import struct
import sys
import tempfile

import atheris

import numpy as np  # not instrumented as a whole: only its .npy header parser, below

with atheris.instrument_imports(include=["fastmoments", "zipfile"]):
    import zipfile

    import fastmoments
    from fastmoments import _stream  # noqa: F401  (instrumented: the planning lives here)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from input_layout import decode  # noqa: E402

# NumPy's .npy header parser (already imported with numpy): its functions, instrumented in place.
_fmt = sys.modules.get("numpy.lib._format_impl", np.lib.format)
for _name in ("read_magic", "read_array_header_1_0", "read_array_header_2_0", "_read_array_header",
              "_filter_header", "descr_to_dtype", "_check_version", "_read_bytes"):
    if callable(getattr(_fmt, _name, None)):
        atheris.instrument_func(getattr(_fmt, _name))
SKIP_KNOWN = os.environ.get("FASTMOMENTS_FUZZ_SKIP_KNOWN") == "1"
_DIR = tempfile.mkdtemp(prefix="fm-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
PATH = os.path.join(_DIR, "input.bin")
ALLOWED = (ValueError, TypeError, OSError)
INT64_MAX = 2**63 - 1


def _shape_overflows(shape) -> bool:
    """A negative size, or a size or product of sizes (in bytes, up to 16 per item) past int64."""
    n = 1
    for s in shape:
        if s < 0 or s * 16 > INT64_MAX:
            return True
        n *= s
    return n * 16 > INT64_MAX


def _known_bug(body: bytes, kind: int, kwargs) -> bool:
    """Issue 17, open when this was written: a header (or shape=) with a negative size, a product
    past int64 or a bool for a size (rows 1-2); a compressed member whose header promises more
    bytes than the member holds (blocks are planned for all its rows: a hang)."""
    if kind == 3:
        shape = kwargs.get("shape") or ()
        return any(s < -1 for s in shape) or _shape_overflows([s for s in shape if s != -1])
    head, member_size = body, None
    if body[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(body)) as zf:
                infos = zf.infolist()
                head = zf.open(infos[0]).read(65536) if infos else b""
                if infos and infos[0].compress_type != zipfile.ZIP_STORED:
                    member_size = infos[0].file_size
        except Exception:  # noqa: BLE001 - not a zip NumPy reads: not this bug
            return False
    # NumPy >= 2 refuses such headers itself, so read the shape from the dict text.
    if head[:6] != b"\x93NUMPY" or len(head) < 10:
        return False
    wide = head[6] >= 2
    start = 12 if wide else 10
    try:
        n = struct.unpack("<I" if wide else "<H", head[8:start])[0]
        d = ast.literal_eval(head[start:start + n].decode("utf8" if head[6] >= 3 else "latin1"))
        shape = d.get("shape") if isinstance(d, dict) else None
    except Exception:  # noqa: BLE001 - a header NumPy refuses: not this bug
        return False
    if not (isinstance(shape, tuple) and all(isinstance(s, int) for s in shape)):
        return False
    if _shape_overflows(shape) or any(isinstance(s, bool) for s in shape):
        return True
    return member_size is not None and int(np.prod(shape, dtype=object)) > member_size


def _raised_in(exc: BaseException, filename: str) -> bool:
    """True when the innermost Python frame of ``exc`` is in a file called ``filename``."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.basename(tb.tb_frame.f_code.co_filename) == filename


def _check_against_numpy(r, axis, sampled: bool) -> None:
    """A .npy file fastmoments read whole: NumPy must read it and agree."""
    try:
        arr = np.load(PATH, mmap_mode="r", allow_pickle=False)
    except (ValueError, TypeError, OSError, EOFError) as exc:
        raise AssertionError(f"fastmoments read a file NumPy refuses ({exc!r})") from None
    if sampled or axis is not None or not isinstance(arr, np.ndarray):
        return
    count, mean = np.asarray(r.count), np.asarray(r.mean, np.float64)
    if count.shape != ():
        # issue 17 row 7 (open): axis=None on a Fortran-order file gives shape (1,)
        if not (SKIP_KNOWN and count.shape == (1,)):
            raise AssertionError(f"axis=None gave statistics of shape {count.shape}")
        count, mean = count.reshape(()), mean.reshape(())
    assert int(count) == arr.size, (int(count), arr.shape)
    x = np.asarray(arr, dtype=np.float64) if arr.dtype.kind in "biuf" else None
    if x is None or x.size == 0 or not np.isfinite(x).all() or np.abs(x).max() > 1e150:
        return
    want = x.mean()
    tol = 1e-9 * max(1.0, float(np.abs(x).max()))
    assert abs(float(mean) - want) <= tol, (float(mean), want)


def TestOneInput(data: bytes) -> None:
    decoded = decode(data)
    if decoded is None:
        return
    kind, body, kwargs, axis, sample, seed = decoded
    if SKIP_KNOWN and _known_bug(body, kind, kwargs):
        return
    with open(PATH, "wb") as f:
        f.write(body)
    try:
        r = fastmoments.compute(PATH, axis=axis, sample=sample, sample_seed=seed, threads=1, **kwargs)
    except ALLOWED as exc:
        msg = str(exc)
        # Errors about the file must name it; usage errors about arguments need not.
        about_args = any(w in msg for w in ("shape=", "dtype=", "sample", "axis", "empty reduction",
                                            "no values along"))
        if kind == 3 and isinstance(exc, TypeError):  # the dtype= argument
            about_args = True
        if SKIP_KNOWN and isinstance(exc, TypeError) and "cannot compute moments of dtype" in msg:
            about_args = True  # issue 17: the dtype TypeError does not name the file (open)
        if SKIP_KNOWN and (_raised_in(exc, "zipfile.py") or
                           (isinstance(exc, OSError) and body[:2] == b"PK")):
            # issue 17 (open): zipfile's errors, or a seek to a negative member offset (EINVAL)
            about_args = True
        if SKIP_KNOWN and "need at least one array to concatenate" in msg:
            about_args = True  # issue 17 row 8 (open): byte-swapped data with an empty axis
        if not about_args and os.path.basename(PATH) not in msg:
            raise AssertionError(f"an error that does not name the file: {exc!r}") from None
        return
    except Exception as exc:  # noqa: BLE001
        if SKIP_KNOWN and _raised_in(exc, "zipfile.py"):  # issue 17: zipfile's errors escape (open)
            return
        if SKIP_KNOWN and isinstance(exc, (MemoryError, RecursionError)) and _raised_in(exc, "ast.py"):
            return  # issue 17: a deeply nested header overflows NumPy's literal_eval (open)
        raise
    if kind == 0 and body[:6] == b"\x93NUMPY":
        _check_against_numpy(r, axis, sample is not None)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
