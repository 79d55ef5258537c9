"""Writes the fuzz target's seed corpus (fuzz/corpus/) from tests/untrusted_corpus.py's files.

Each seed is encoded as fuzz/input_layout.py describes: every small .npy/.npz of the corpus as a whole file, the .npy ones also wrapped as
stored and deflated .npz members, and the raw files with their dtype=/shape=.

    python fuzz/make_seeds.py [OUT_DIR]     (default fuzz/corpus; run after changing the corpus)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

sys.path.insert(0, str(HERE))
from input_layout import RAW_DTYPES, encode  # noqa: E402
from untrusted_corpus import build_corpus  # noqa: E402

MAX_SEED = 4096


def seeds():
    with tempfile.TemporaryDirectory() as d:
        for i, case in enumerate(build_corpus(d)):
            p = Path(case.file)
            if not p.is_file() or p.stat().st_size > MAX_SEED or not str(p).startswith(d):
                continue
            body = p.read_bytes()
            stem = case.name.replace(".", "_")
            door = i % 4
            if case.kwargs:
                dt = case.kwargs["dtype"]
                if dt not in RAW_DTYPES:
                    continue
                shape = case.kwargs.get("shape") or []
                if any(not -2**63 <= s < 2**63 for s in shape):
                    continue
                yield f"raw-{stem}", encode("raw", body, door, 127, i, dtype=dt, shape=shape)
                continue
            yield f"file-{stem}", encode("file", body, door, 127, i)
            if case.name.endswith(".npy"):
                yield f"stored-{stem}", encode("stored", body, door + 1, 63, 1)
                yield f"deflated-{stem}", encode("deflated", body, door + 2, 191, 2)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "corpus"
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name, data in seeds():
        (out / name).write_bytes(data)
        n += 1
    print(f"wrote {n} seeds to {out}")


if __name__ == "__main__":
    main()
