"""Lineage: where every artifact and every row came from.

Sidecars. After a rule's library call returns, `sftdpo.runner.run` writes one for each declared output that is a
table (`.parquet`, `.h5`: `<dir>/<stem>.lineage.json`) or a directory (a model: `<dir>/lineage.json`):

    artifact   the output's path (as the rule names it, relative to the project)
    digest     its content digest: sha256 of a table's bytes; for a model directory `sftdpo.io.model_digest`
               (weights, config, tokenizer; no bookkeeping, no absolute paths), which rollouts record as
               `model_digest`
    rule, wildcards
    inputs     [{name, path, digest}]: each input's digest, read from the input's own sidecar when it has one
    params     the rule's params (the config subset it used) without bookkeeping (work_dir, threads, ...)
    code       the rule's code fingerprint (sftdpo.fingerprint)
    packages   python and the installed versions of the libraries that decide results

No timestamps: an identical rerun writes an identical sidecar.

Walks. `python -m sftdpo.lineage results/prefs/pairs.parquet --id X` follows a pair to its chosen and rejected
rollouts, their prompt in the split, the demonstration it came from, the model that sampled the rollouts and that
model's own inputs down to the base model; each hop is found through the sidecars' recorded inputs. A recorded
digest that no longer matches the file on disk is reported as changed since. A rollouts table (`--id` a rollout
id), any other table (`--id` a row id: the row traced to its demonstration) or a model directory work too.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from sftdpo.io import model_digest, read_json, sha256_file, write_json

TABLE_SUFFIXES = (".parquet", ".h5")
MODEL_SIDECAR = "lineage.json"
# The libraries whose versions can change a result (read from package metadata: importing torch costs seconds).
PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "snakemake", "pandas",
            "pyarrow", "numpy"]  # fmt: skip
# Params that place or pace a job without changing what it computes (the code fingerprint is recorded apart).
BOOKKEEPING_PARAMS = {"work_dir", "threads", "tracking_dir", "code"}


class LineageError(RuntimeError):
    pass


# -- sidecars ------------------------------------------------------------------------------------------------


def sidecar_path(artifact: str | Path) -> Path | None:
    """Where an artifact's sidecar is: `<dir>/lineage.json` for a directory, `<stem>.lineage.json` beside a table,
    None for anything else (JSON summaries, plots)."""
    path = Path(artifact)
    if path.is_dir():
        return path / MODEL_SIDECAR
    if path.suffix in TABLE_SUFFIXES:
        return path.with_name(f"{path.stem}.lineage.json")
    return None


def artifact_digest(path: str | Path) -> str:
    """The content digest of a model directory or a file, as the sidecars record it."""
    return model_digest(path) if Path(path).is_dir() else sha256_file(path)


def read_sidecar(artifact: str | Path) -> dict[str, Any] | None:
    side = sidecar_path(artifact)
    return read_json(side) if side is not None and side.exists() else None


def recorded_digest(path: str | Path) -> str | None:
    """An input's digest: from its own sidecar when it has one (big inputs are hashed once, by their producer),
    else computed. The pipeline's own JSON reports (results/**/*.json, e.g. collect's shard summaries) get none:
    they hold timings, so their bytes change with every run, and no row comes from them."""
    side = read_sidecar(path)
    if side:
        return side["digest"]
    if Path(path).suffix == ".json" and Path(path).parts[:1] == ("results",):
        return None
    return artifact_digest(path)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def remove_sidecars(outputs: list[str]) -> None:
    """Delete the sidecars of outputs about to be rebuilt, so a failed job never leaves an old one behind."""
    for output in outputs:
        side = sidecar_path(output)
        if side is not None and Path(output).suffix in TABLE_SUFFIXES and side.exists():
            side.unlink()


def write_sidecars(
    *,
    rule: str,
    wildcards: dict[str, Any],
    inputs: list[tuple[str | None, str]],
    outputs: list[str],
    params: dict[str, Any],
) -> list[Path]:
    """Write the sidecar of each output that is a table or a directory; returns their paths. `inputs` are
    (name or None, path) in the rule's order."""
    outs = [o for o in outputs if sidecar_path(o) is not None]
    if not outs:
        return []
    recorded = {
        "rule": rule,
        "wildcards": dict(wildcards),
        "inputs": [{"name": name, "path": str(path), "digest": recorded_digest(path)} for name, path in inputs],
        "params": {k: v for k, v in params.items() if k not in BOOKKEEPING_PARAMS},
        "code": params.get("code"),
        "packages": package_versions(),
    }
    written = []
    for out in outs:
        side = sidecar_path(out)
        write_json({"artifact": str(out), "digest": artifact_digest(out), **recorded}, side)
        written.append(side)
    return written


# -- walks ---------------------------------------------------------------------------------------------------


class Walker:
    """Reads tables and sidecars for a walk, once each, and notes every recorded digest that no longer matches."""

    def __init__(self) -> None:
        self.tables: dict[str, Any] = {}
        self.checked: dict[str, str] = {}
        self.changed: list[str] = []

    def sidecar(self, artifact: str | Path) -> dict[str, Any]:
        side = read_sidecar(artifact)
        if side is None:
            raise LineageError(f"{artifact}: no lineage sidecar ({sidecar_path(artifact)}); rebuild it with snakemake")
        return side

    def check(self, path: str | Path, recorded: str, by: str) -> bool:
        """Does `path` still have the digest `by` recorded? A mismatch is noted as changed since."""
        if recorded is None:  # a JSON report, recorded without a digest
            return True
        key = str(path)
        if key not in self.checked:
            self.checked[key] = artifact_digest(path) if Path(path).exists() else "missing"
        same = self.checked[key] == recorded
        if not same:
            now = "missing" if self.checked[key] == "missing" else self.checked[key][:12]
            self.changed.append(f"{path} changed since {by} recorded it ({recorded[:12]}; now {now})")
        return same

    def table(self, path: str | Path):
        key = str(path)
        if key not in self.tables:
            from sftdpo.io import read_parquet

            self.tables[key] = read_parquet(path).set_index("id", drop=False)
        return self.tables[key]

    def row(self, path: str | Path, row_id: str) -> dict[str, Any]:
        frame = self.table(path)
        if row_id not in frame.index:
            raise LineageError(f"{path}: no row with id {row_id!r}")
        return frame.loc[row_id].to_dict()

    def artifact(self, path: str | Path) -> dict[str, Any]:
        """An artifact's sidecar, its digest checked against the file."""
        side = self.sidecar(path)
        return {**side, "unchanged": self.check(path, side["digest"], f"{sidecar_path(path)}")}

    def input_named(self, artifact: str | Path, name: str) -> dict[str, Any]:
        side = self.sidecar(artifact)
        for item in side["inputs"]:
            if item["name"] == name:
                self.check(item["path"], item["digest"], f"{sidecar_path(artifact)}")
                return item
        raise LineageError(f"{sidecar_path(artifact)}: rule {side['rule']} recorded no input named {name!r}")

    def trace(self, path: str | Path, row_id: str) -> list[dict[str, Any]]:
        """The tables a row passed through with the same id, from `path` upstream through the recorded inputs:
        [{table, rule, row}], the last one the earliest (for a demonstration: its problem in rule problems' table,
        or the collect shard of an imported row)."""
        hops = []
        while True:
            side = self.sidecar(path)
            hops.append({"table": str(path), "rule": side["rule"], "row": self.row(path, row_id)})
            upstream = [i for i in side["inputs"] if i["path"].endswith(".parquet") and self._holds(i["path"], row_id)]
            if not upstream:
                return hops
            self.check(upstream[0]["path"], upstream[0]["digest"], f"{sidecar_path(path)}")
            path = upstream[0]["path"]

    def _holds(self, path: str, row_id: str) -> bool:
        return Path(path).exists() and row_id in self.table(path).index

    def models(self, model_dir: str | Path) -> list[dict[str, Any]]:
        """A model and the models it was trained from, down to the base model: each one's sidecar."""
        chain = []
        path = str(model_dir)
        while True:
            side = self.artifact(path)
            chain.append({"path": path, **side})
            parent = next((i for i in side["inputs"] if i["name"] == "model"), None)
            if parent is None:
                return chain
            self.check(parent["path"], parent["digest"], f"{sidecar_path(path)}")
            path = parent["path"]

    def prompt(self, split_path: str, prompt_id: str) -> dict[str, Any]:
        """A prompt's row in its split and the demonstration it came from (the row in demos.parquet, written
        by merge_demos; the collect shard's when the trace does not reach it)."""
        hops = self.trace(split_path, prompt_id)
        demo = next((h for h in hops if h["rule"] == "merge_demos"), hops[-1])
        meta = demo["row"].get("meta")
        return {
            "hops": [{"table": h["table"], "rule": h["rule"]} for h in hops],
            "demo": {
                "table": demo["table"],
                "id": demo["row"]["id"],
                "expert": demo["row"].get("expert"),
                "meta": json.loads(meta) if isinstance(meta, str) else meta,
            },
        }

    def rollout(self, rollouts_path: str, rollout_id: str) -> dict[str, Any]:
        """A rollout: its row, the shard that sampled it, the split its prompt came from, the model."""
        self.artifact(rollouts_path)
        hops = self.trace(rollouts_path, rollout_id)
        shard, row = hops[-1]["table"], hops[-1]["row"]
        model = self.input_named(shard, "model")
        if row["model_digest"] != model["digest"]:
            self.changed.append(
                f"{rollouts_path}: rollout {rollout_id} records model digest {row['model_digest'][:12]}, "
                f"but {sidecar_path(shard)} recorded {model['path']} as {model['digest'][:12]}"
            )
        sampling = ("temperature", "top_p", "max_new_tokens", "seed", "model", "model_digest")
        return {
            "table": shard,
            "id": rollout_id,
            "prompt_id": row["prompt_id"],
            "split": row["split"],
            "variant": int(row["variant"]),
            "sample": int(row["sample"]),
            "correct": bool(row["correct"]),
            "score": float(row["score"]),
            "sampling": {k: _plain(row[k]) for k in sampling},
            "split_table": self.input_named(shard, row["split"])["path"],
            "model_dir": model["path"],
        }

    def pair(self, pairs_path: str, pair_id: str) -> dict[str, Any]:
        self.artifact(pairs_path)
        row = self.row(pairs_path, pair_id)
        rollouts_path = self.input_named(pairs_path, "rollouts")["path"]
        chosen = self.rollout(rollouts_path, row["chosen_id"])
        rejected = self.rollout(rollouts_path, row["rejected_id"])
        return {
            "pair": {
                "table": pairs_path,
                "id": pair_id,
                "kind": row["kind"],
                "split": row["split"],
                "chosen_score": float(row["chosen_score"]),
                "rejected_score": float(row["rejected_score"]),
            },
            "chosen": chosen,
            "rejected": rejected,
            "prompt": self.prompt(chosen["split_table"], chosen["prompt_id"]),
            "models": [_model_summary(m) for m in self.models(chosen["model_dir"])],
        }


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _model_summary(side: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": side["path"],
        "rule": side["rule"],
        "digest": side["digest"],
        "unchanged": side["unchanged"],
        "inputs": side["inputs"],
        "params": side["params"],
    }


def walk(path: str, row_id: str | None = None) -> dict[str, Any]:
    """The lineage of a row of `path` (a pairs table, a rollouts table, any other table) or of a model directory."""
    walker = Walker()
    if Path(path).is_dir():
        result: dict[str, Any] = {"models": [_model_summary(m) for m in walker.models(path)]}
    elif row_id is None:
        raise LineageError(f"{path}: a table needs --id (the id of the row to walk)")
    else:
        import pyarrow.parquet as pq

        columns = set(pq.read_schema(path).names)
        if {"chosen_id", "rejected_id"} <= columns:
            result = walker.pair(path, row_id)
        elif "model_digest" in columns:
            rollout = walker.rollout(path, row_id)
            result = {
                "rollout": rollout,
                "prompt": walker.prompt(rollout["split_table"], rollout["prompt_id"]),
                "models": [_model_summary(m) for m in walker.models(rollout["model_dir"])],
            }
        else:
            walker.artifact(path)
            result = {"prompt": walker.prompt(path, row_id)}
    result["changed_since"] = walker.changed
    return result


# -- printing ------------------------------------------------------------------------------------------------


def _short(digest: str | None) -> str:
    return digest[:12] if digest else "-"


def _print_rollout(role: str, r: dict[str, Any], out: list[str]) -> None:
    s = r["sampling"]
    out.append(f"  {role} rollout {r['id']}  ({r['table']})")
    out.append(f"    correct {r['correct']}, score {r['score']}; variant {r['variant']}, sample {r['sample']}")
    out.append(
        f"    sampled with temperature {s['temperature']}, top_p {s['top_p']}, max_new_tokens {s['max_new_tokens']}, "
        f"seed {s['seed']}"
    )
    out.append(f"    by model {s['model']}  digest {_short(s['model_digest'])}")


def _print_prompt(p: dict[str, Any], out: list[str], indent: str) -> None:
    out.append(f"{indent}prompt {p['demo']['id']}, the same id upstream:")
    for i, hop in enumerate(p["hops"]):
        out.append(f"{indent}  {'   ' if i == 0 else '<- '}{hop['table']}  (rule {hop['rule']})")
    d = p["demo"]
    out.append(f"{indent}demonstration {d['id']}  ({d['table']})")
    out.append(f"{indent}  expert {d['expert']}")
    meta = d["meta"] or {}
    source = meta.get("source")
    if source:
        where = f"line {source['line']}" if "line" in source else f"row {source.get('row')}"
        out.append(f"{indent}  imported from {source.get('file')}, {where} ({source.get('format')})")
    if "request_id" in meta:
        out.append(f"{indent}  teacher request id {meta['request_id']}")
    if "seed" in meta:
        out.append(f"{indent}  seed {meta['seed']}")


def _print_models(models: list[dict[str, Any]], out: list[str], indent: str) -> None:
    for depth, m in enumerate(models):
        pad = indent + "  " * depth
        changed = "" if m["unchanged"] else "  CHANGED SINCE its sidecar was written"
        out.append(f"{pad}model {m['path']}  (rule {m['rule']}) digest {_short(m['digest'])}{changed}")
        for item in m["inputs"]:
            out.append(f"{pad}  input {item['name'] or '-'}: {item['path']}  digest {_short(item['digest'])}")
        if m["rule"] == "base_model":
            out.append(f"{pad}  base model: {m['params'].get('name_or_path', m['params'])}")


def format_walk(result: dict[str, Any]) -> str:
    out: list[str] = []
    if "pair" in result:
        p = result["pair"]
        out.append(f"pair {p['id']}  ({p['table']})")
        out.append(
            f"  {p['kind']} pair, split {p['split']}; chosen score {p['chosen_score']}, "
            f"rejected score {p['rejected_score']}"
        )
        _print_rollout("chosen", result["chosen"], out)
        _print_rollout("rejected", result["rejected"], out)
    if "rollout" in result:
        _print_rollout("the", result["rollout"], out)
    if "prompt" in result:
        _print_prompt(result["prompt"], out, "  ")
    if "models" in result:
        out.append("  sampled by:" if "pair" in result or "rollout" in result else "  model chain:")
        _print_models(result["models"], out, "    ")
    for line in result["changed_since"]:
        out.append(f"WARNING: {line}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sftdpo.lineage",
        description="Walk a row (a preference pair, a rollout, a table row) or a model back to where it came from.",
    )
    parser.add_argument("artifact", help="a table (results/prefs/pairs.parquet, ...) or a model directory")
    parser.add_argument("--id", dest="row_id", help="the id of the row to walk (tables)")
    parser.add_argument("--json", action="store_true", help="print the walk as JSON")
    args = parser.parse_args(argv)
    try:
        result = walk(args.artifact, args.row_id)
    except (LineageError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str) if args.json else format_walk(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
