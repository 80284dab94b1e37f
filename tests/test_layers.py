"""The library's layers (shared/DESIGN.md): a stage never depends on another stage, lower layers never on
higher ones, and no module depends on itself through others. The code fingerprint follows imports, so
these rules keep the rerun scope of a library edit exact."""

from pathlib import Path

import pytest

from sftdpo.fingerprint import _imports, dependencies

SRC = Path(__file__).resolve().parents[1] / "src" / "sftdpo"
LAYERS = {
    "plumbing": {
        "io",
        "bulk",
        "records",
        "tables",
        "chat",
        "fingerprint",
        "runner",
        "lineage",
        "plots",
        "pages",
        "progress",
        "config_checks",
        "answers",
        "slurm_status",
    },
    "domain": {"tasks", "tasks.arithmetic", "tasks.gsm8k", "modeling"},
    "services": {"generation", "training", "curriculum", "launch", "experts", "teacher", "importers"},
    "stages": {
        "base_model",
        "collect",
        "validate",
        "convert",
        "split",
        "sft",
        "rollouts",
        "preferences",
        "dpo",
        "evaluate",
        "report",
        "export",
        "plan",
    },
}
ORDER = list(LAYERS)
LAYER_OF = {f"sftdpo.{m}": layer for layer, modules in LAYERS.items() for m in modules}
STAGES = {f"sftdpo.{m}" for m in LAYERS["stages"]}


def library_modules():
    names = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names - {"sftdpo"})


def test_every_module_has_a_layer():
    assert set(library_modules()) == set(LAYER_OF), "place new modules in LAYERS (and in shared/DESIGN.md's picture)"


@pytest.mark.parametrize("module", sorted(LAYER_OF))
def test_imports_point_down_and_stages_are_siblings(module):
    rank = ORDER.index(LAYER_OF[module])
    for imported in _imports(module):
        if imported == module or imported == "sftdpo":
            continue
        assert ORDER.index(LAYER_OF[imported]) <= rank, (
            f"{module} ({LAYER_OF[module]}) imports {imported} ({LAYER_OF[imported]})"
        )
        assert not (module in STAGES and imported in STAGES), f"stage {module} imports stage {imported}"


@pytest.mark.parametrize("module", sorted(LAYER_OF))
def test_no_cycles_and_no_stage_depends_on_another(module):
    # A package and its modules reach each other (importing tasks.gsm8k runs tasks/__init__.py, whose
    # get_task knows every task): cycles inside one package are Python's, not layering.
    package = module.split(".")[1]
    outside = [m for m in _imports(module) if m.split(".")[1] != package]
    assert module not in dependencies(*outside), f"import cycle through {module}"
    deps = set(dependencies(module))
    if module in STAGES:
        assert deps & STAGES == {module}
    if LAYER_OF[module] == "domain":  # tasks and modeling never depend on services or stages
        assert not {d for d in deps if LAYER_OF[d] in ("services", "stages")}


def test_the_check_sees_a_violation(monkeypatch):
    """The rules above can fail: a stage importing a stage is found (imports inside functions included)."""
    import sftdpo.fingerprint as fingerprint

    fake = {"sftdpo.dpo": ("sftdpo.sft",), "sftdpo.sft": ()}
    monkeypatch.setattr(fingerprint, "_imports", lambda name: fake.get(name, ()))
    assert "sftdpo.sft" in fingerprint.dependencies("sftdpo.dpo")
    assert set(fingerprint.dependencies("sftdpo.dpo")) & STAGES == {"sftdpo.dpo", "sftdpo.sft"}


def test_training_stages_leave_pyplot_to_the_drawing():
    """sft and dpo draw their curves after training: importing them (as their jobs do before the first step) does
    not import matplotlib.pyplot (~0.5 s), and `plots.pyplot` gives it on the headless backend when they draw."""
    import subprocess
    import sys

    code = (
        "import sys; import sftdpo.sft, sftdpo.dpo; print('matplotlib.pyplot' in sys.modules); "
        "from sftdpo.plots import pyplot; print(pyplot().get_backend().lower(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=SRC.parent, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "agg", "True"]
