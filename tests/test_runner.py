"""What every rule script does before its stage: `sftdpo.runner.start_job` first, then the stage's imports."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "workflow" / "scripts").glob("*.py"))
# What a script may do before `start_job()`: put src/ on the path and import the runner (which imports nothing heavy).
PREAMBLE = {
    "import sys",
    "from pathlib import Path",
    "sys.path.insert(0, str(Path(__file__).resolve().parents[2] / 'src'))",
    "from sftdpo.runner import run, start_job",
}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_every_rule_script_starts_the_job_before_it_imports_its_stage(script):
    body = ast.parse(script.read_text()).body
    statements = [ast.unparse(node) for node in body if not isinstance(node, ast.Expr) or node is not body[0]]
    assert "start_job()" in statements, f"{script.name} does not call start_job()"
    before = statements[: statements.index("start_job()")]
    assert set(before) == PREAMBLE, f"{script.name}: {set(before) ^ PREAMBLE}"


# Imports what a model job imports on its way to the first forward pass; prints the full collections it took.
IMPORTS = """
import gc, sys
from sftdpo.runner import start_job
if sys.argv[1] == "start_job":
    start_job()
import torch, pandas, transformers.modeling_utils
print(gc.get_stats()[2]["collections"])
"""


def test_start_job_spares_the_full_collections_of_start_up():
    def full_collections(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", IMPORTS, mode], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    assert full_collections("plain") >= 3  # the heap grows by a quarter again and again: 6 on the dev machine
    assert full_collections("start_job") == 0
