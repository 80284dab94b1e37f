"""The data stages' artifacts keep their content across speed work (issue 11): the tiny run's tables and
tokens hash to the digests recorded in tests/config/data_digests.json.

Content, not file bytes, is compared (parquet and HDF5 writers stamp their versions into the files). After a
change that is meant to alter the data, rewrite the digests and say why in the commit:

    SFTDPO_WRITE_DIGESTS=1 .venv/bin/python -m pytest tests/test_data_identity.py
"""

import json
import os

import pytest

from conftest import ROOT
from sftdpo.io import content_digest

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


def test_data_artifacts_keep_their_content(tiny_run):
    results = tiny_run[0] / "results"
    found = {name: content_digest(results / name) for name in [*TABLES, "data/tokens.h5"]}
    if os.environ.get("SFTDPO_WRITE_DIGESTS"):
        DIGESTS.write_text(json.dumps(found, indent=1) + "\n")
    assert found == json.loads(DIGESTS.read_text())
