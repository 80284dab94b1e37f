"""The data stages' artifacts keep their content across speed work (issue 11): the tiny run's tables and
tokens hash to the digests recorded in tests/config/data_digests.json.

Content, not file bytes, is compared (parquet and HDF5 writers stamp their versions into the files). After a
change that is meant to alter the data, rewrite the digests and say why in the commit:

    SFTDPO_WRITE_DIGESTS=1 .venv/bin/python -m pytest tests/test_data_identity.py
"""

import hashlib
import json
import os

import h5py
import pytest

from conftest import ROOT
from sftdpo.io import read_parquet

pytestmark = pytest.mark.e2e

DIGESTS = ROOT / "tests" / "config" / "data_digests.json"
TABLES = [
    "demos/demos.parquet",
    "demos/validated.parquet",
    "demos/rejected.parquet",
    "data/chat.parquet",
    "data/train.parquet",
    "data/val.parquet",
    "data/test.parquet",
]


def content_digest(path) -> str:
    """sha256 of a table's columns, dtypes and values, or of tokens.h5's arrays and attributes."""
    digest = hashlib.sha256()
    if path.suffix == ".h5":
        with h5py.File(path, "r") as h5:
            digest.update(json.dumps({k: str(v) for k, v in sorted(h5.attrs.items())}).encode())
            for name in sorted(h5):
                data = h5[name][()]
                # Strings come back as bytes objects: hash their text, not the array's pointers.
                raw = json.dumps([v.decode() for v in data]).encode() if data.dtype == object else data.tobytes()
                digest.update(name.encode() + raw)
    else:
        frame = read_parquet(path)
        digest.update(json.dumps([list(frame.columns), [str(t) for t in frame.dtypes]]).encode())
        digest.update(frame.to_json(orient="split", double_precision=15, default_handler=str).encode())
    return digest.hexdigest()


def test_data_artifacts_keep_their_content(tiny_run):
    results = tiny_run[0] / "results"
    found = {name: content_digest(results / name) for name in [*TABLES, "data/tokens.h5"]}
    if os.environ.get("SFTDPO_WRITE_DIGESTS"):
        DIGESTS.write_text(json.dumps(found, indent=1) + "\n")
    assert found == json.loads(DIGESTS.read_text())
