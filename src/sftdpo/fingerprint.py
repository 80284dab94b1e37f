"""Code fingerprints: a stage reruns when the library code it runs changes.

A rule passes `code=code_fingerprint("sftdpo.collect", ...)` as a param. The fingerprint hashes the
named modules and every `sftdpo` module they import, transitively (imports inside functions count),
so editing `sftdpo/tasks/arithmetic.py` reruns collect, validate, rollouts and evaluate, while
editing `sftdpo/report.py` reruns only the report. Comments and docstrings count too: a deliberate,
simple rule (any edit of the file reruns its dependants).
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1]


def _module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@lru_cache(maxsize=None)
def _imports(name: str) -> tuple[str, ...]:
    path = _module_path(name)
    if path is None:
        return ()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "sftdpo")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sftdpo":
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return tuple(sorted(n for n in found if _module_path(n) is not None))


def dependencies(*modules: str) -> list[str]:
    """The modules and all sftdpo modules they import, transitively, sorted."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen or _module_path(name) is None:
            continue
        seen.add(name)
        todo.extend(_imports(name))
        parent = name.rpartition(".")[0]
        if parent and parent != "sftdpo":  # importing pkg.mod runs pkg/__init__.py (the root holds only a version)
            todo.append(parent)
    return sorted(seen - {"sftdpo"})


def code_fingerprint(*modules: str) -> str:
    digest = hashlib.sha256()
    for name in dependencies(*modules):
        digest.update(name.encode())
        digest.update(_module_path(name).read_bytes())
    return digest.hexdigest()[:16]
