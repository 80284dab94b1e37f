"""Validation: re-check every demonstration, keep rejected rows with a reason, enforce quality gates.

Rows are rejected for integrity (types, empty, lengths), duplicates (ids; prompts identical, or equal
after the split's normalisation: `near_duplicate_prompt`), a prompt given with different answers
(`conflicting_answers`: every row of it, since none can be trusted) and the task's verifier. Rows the
importer could not read (`collect.expert: files`) are listed too, from the shard summaries: counted in
`validation.json` under `import` and written to `rejected.parquet` with their file, line and reason, so
one table holds every row that will not be trained on. A one-line summary goes to the console.

In the DAG the work is split in two, so it spreads over nodes with the collect shards: rule validate_shard makes
each demo shard's `row_checks` (integrity, the verifier, digests of prompts and answers), and rule validate
`decide`s on all of them (the checks across rows, on the digests) and writes the outputs. `validate` without
`checks_paths` does both in one process: the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict, namedtuple
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sftdpo.answers import normalise
from sftdpo.bulk import background_map, gc_paused
from sftdpo.chat import demo_context, normalise_prompt
from sftdpo.io import read_json, read_parquet, write_arrow, write_json, write_parquet
from sftdpo.tables import DEMO_COLUMNS
from sftdpo.tasks import get_task

log = logging.getLogger(__name__)

TEXT_FIELDS = ["id", "task", "difficulty", "prompt", "completion", "answer", "expert"]
Row = namedtuple("Row", [*TEXT_FIELDS, "correct", "meta"])  # the columns check_rows reads
# Every character Python's str.isspace() accepts (RE2's \s is only [\t\n\f\r ]): a text matching this is empty
# or blank, so the Arrow scan of `_integrity_suspects` flags every row `_integrity` would reject as empty.
BLANK = "^[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
VERIFY_BLOCK = 65_536  # rows a call of `_verify_block` handles
MIN_ROWS_FOR_WORKERS = 2 * VERIFY_BLOCK  # fewer rows than this are verified by the job itself (workers take ~1 s)
VALIDATED_ROW_GROUP = 65_536  # rows per row group of validated.parquet: a convert shard reads only the groups it needs


class QualityGateError(RuntimeError):
    """A quality gate failed; the message names the gate and the numbers."""


def check_rows(frame: pd.DataFrame, **settings: Any) -> pd.DataFrame:
    """Return `frame` with `reason` and `field` columns: both None for a valid row.

    The first failing check wins, in this order: integrity (types, empty strings, lengths), a duplicate
    id, a prompt given with different answers (all its rows), duplicate prompts (the first occurrence
    is kept; `near_duplicate_prompt` when they differ only in case or whitespace), then the verifier.
    `settings`: those of `row_checks` (source, task options, length limits, verifier processes). Rules
    validate_shard and validate split this in two: `row_checks` per demo shard, `decide` on all of them.
    """
    return decide(frame, row_checks(frame, **settings))


# The columns of a shard's checks (rule validate_shard): a row's own verdicts, and digests of what the checks
# across rows compare (16 bytes each: a collision among 10^9 rows has odds of 10^-21).
CHECK_COLUMNS = [
    "id",
    "integrity",
    "integrity_field",
    "verifier",
    "prompt_digest",
    "normalised_digest",
    "answer_digest",
]


@gc_paused()  # a row list and a verdict per row, 1M rows (sftdpo.bulk)
def row_checks(
    frame: pd.DataFrame,
    *,
    source: str,
    task_options: dict[str, dict[str, Any]],
    max_prompt_chars: int,
    max_completion_chars: int,
    workers: int = 1,
) -> pd.DataFrame:
    """What each row's checks find from the row alone (`CHECK_COLUMNS`, one row per row of `frame`): the integrity
    reason and field, the verifier's reason (None: it holds), and digests of the prompt's exact and normalised
    identity and of the canonical answer (None where integrity failed). `decide` reads them for the checks across
    rows. `workers`: processes that run the verifier side by side (the result is the same for any number)."""
    missing = [c for c in DEMO_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}; expected {DEMO_COLUMNS}")
    limits = {"prompt": max_prompt_chars, "completion": max_completion_chars}
    # Plain lists, read once: iterating pandas' (Arrow-backed) string columns row by row is slow at 1M rows.
    columns = {name: frame[name].tolist() for name in Row._fields}
    integrity = [(None, None)] * len(frame)
    for i in _integrity_suspects(frame, columns, limits):  # the few rows a column-wise scan flags get the full check
        integrity[i] = _integrity(Row(*(columns[name][i] for name in Row._fields)), limits)
    # The verifier's reason for every row that passed integrity, None when it holds: a row's verdict depends on
    # that row alone, so worker processes verify blocks of rows while this one reads the prompts' identity.
    candidates = [i for i, (reason, _) in enumerate(integrity) if reason is None]
    blocks = verify_blocks(columns, candidates)
    workers = workers if len(candidates) >= MIN_ROWS_FOR_WORKERS else 1
    if workers > 1:
        log.info("validate: %d rows verified by %d worker processes", len(candidates), workers)
    with background_map(
        _verify_block, blocks, workers=workers, initializer=_start_verifier, initargs=(task_options,)
    ) as verdicts:
        identity: list[tuple[bytes | None, bytes | None]] = [(None, None)] * len(frame)
        for i in candidates:
            exact, key = _identity(columns["prompt"][i], columns["meta"][i])
            identity[i] = (_digest(exact), _digest(key))
        canonical: dict[str, bytes] = {}  # answers repeat: normalise each distinct one once
        answers: list[bytes | None] = []
        for answer, (reason, _) in zip(columns["answer"], integrity):
            if reason is None and answer not in canonical:
                canonical[answer] = _digest(normalise(answer) or answer.strip())
            answers.append(canonical[answer] if reason is None else None)
        verifier: list[str | None] = [None] * len(frame)
        for i, reason in zip(candidates, (reason for block in verdicts() for reason in block)):
            verifier[i] = reason
    return pd.DataFrame(
        {
            "id": frame["id"].to_numpy(),
            "integrity": pd.Series([reason for reason, _ in integrity], dtype=object),
            "integrity_field": pd.Series([field for _, field in integrity], dtype=object),
            "verifier": pd.Series(verifier, dtype=object),
            "prompt_digest": pd.Series([exact for exact, _ in identity], dtype=object),
            "normalised_digest": pd.Series([key for _, key in identity], dtype=object),
            "answer_digest": pd.Series(answers, dtype=object),
        }
    )


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def decide(frame: pd.DataFrame, checks: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `reason` and `field` columns (both None for a kept row), from its rows' `row_checks` (in the
    same order) and the checks across rows: a duplicate id, a prompt given with different answers (every row of it),
    a duplicate or near-duplicate prompt (the first kept occurrence stays), in that order, after integrity and
    before the verifier. Only the digests of prompts and answers are compared, not the texts.

    A row that passed integrity and shares neither its id nor its normalised prompt with another such row can meet
    none of the checks across rows (an exact duplicate is a normalised one too): the verifier decides it, for all
    such rows at once. Only the rows that share one go through the checks in order."""
    reasons = _values(checks["integrity"])
    fields = _values(checks["integrity_field"])
    verifier = _values(checks["verifier"])
    ok = checks["integrity"].isna().to_numpy()
    shared = np.zeros(len(checks), dtype=bool)
    shared[ok] = (
        checks["id"][ok].duplicated(keep=False).to_numpy()
        | checks["normalised_digest"][ok].duplicated(keep=False).to_numpy()
    )
    alone = ok & ~shared
    reasons[alone] = verifier[alone]
    fields[alone & (verifier != None)] = "completion"  # noqa: E711 (an element-wise comparison)
    rows = np.flatnonzero(shared)
    ids, exacts, keys, answers_of = (
        checks[name].iloc[rows].to_numpy() for name in ("id", "prompt_digest", "normalised_digest", "answer_digest")
    )
    answers: dict[bytes, set[bytes]] = defaultdict(set)
    for key, answer in zip(keys, answers_of):
        answers[key].add(answer)
    seen_ids: set[str] = set()
    seen_prompts: set[bytes] = set()
    seen_normalised: set[bytes] = set()
    for i, row_id, exact, key in zip(rows, ids, exacts, keys):
        reason = field = None
        if row_id in seen_ids:
            reason, field = "duplicate_id", "id"
        elif len(answers[key]) > 1:
            reason, field = "conflicting_answers", "answer"
        elif exact in seen_prompts:
            reason, field = "duplicate_prompt", "prompt"
        elif key in seen_normalised:
            reason, field = "near_duplicate_prompt", "prompt"
        elif verifier[i] is not None:
            reason, field = verifier[i], "completion"
        else:
            seen_ids.add(row_id)
            seen_prompts.add(exact)
            seen_normalised.add(key)
        reasons[i], fields[i] = reason, field
    out = frame.copy()
    out["reason"] = reasons.tolist()
    out["field"] = fields.tolist()
    return out


def _values(column: pd.Series) -> np.ndarray:
    """The column as an object array, None where a value is missing (pandas' text columns hold NaN there)."""
    values = column.to_numpy(dtype=object, copy=True)
    values[column.isna().to_numpy()] = None
    return values


def check_shard(
    *,
    shard_path: str,
    checks_path: str,
    task_options: dict[str, dict[str, Any]],
    max_prompt_chars: int,
    max_completion_chars: int,
    workers: int = 1,
) -> int:
    """Rule validate_shard: `row_checks` of one demo shard, written to `checks_path`; returns its row count."""
    frame = read_parquet(shard_path)
    checks = row_checks(
        frame,
        source=shard_path,
        task_options=task_options,
        max_prompt_chars=max_prompt_chars,
        max_completion_chars=max_completion_chars,
        workers=workers,
    )
    write_parquet(checks, checks_path)
    return len(checks)


def read_checks(checks_paths: list[str], demos: pd.DataFrame, demos_path: str) -> pd.DataFrame:
    """The shards' checks in the order of demos.parquet's rows (merge_demos: the shards one after another, sorted
    by id, stable); an error when they do not line up (checks from other shards than the demos)."""
    # Only the columns `decide` reads: a checks file without one of them fails here, naming it.
    tables = [pq.read_table(path, columns=CHECK_COLUMNS) for path in checks_paths]
    table = pa.concat_tables(tables, promote_options="default")
    # A stable sort; the digests stay Arrow-backed: a million Python bytes objects each cost more than the checks.
    table = table.take(pc.sort_indices(table, sort_keys=[("id", "ascending")]))
    checks = table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_binary(t) else None)
    if len(checks) != len(demos) or not (checks["id"].to_numpy() == demos["id"].to_numpy()).all():
        raise ValueError(
            f"the shards' checks ({len(checks)} rows: {checks_paths}) do not line up with the rows of {demos_path} "
            f"({len(demos)}); rerun validate_shard and merge_demos from the same collect shards"
        )
    return checks


_VERIFIER: dict[str, Any] = {}  # a process's task options and tasks (set by _start_verifier)


def _start_verifier(task_options: dict[str, dict[str, Any]]) -> None:
    _VERIFIER.update(options=task_options, tasks={})


def _verify_block(block: tuple[list[str], list[str], list[str]]) -> list[str | None]:
    """A block's (tasks, completions, answers) -> each row's rejection reason by its task's verifier, or None."""
    tasks, options = _VERIFIER["tasks"], _VERIFIER["options"]
    out: list[str | None] = []
    for name, completion, answer in zip(*block):
        if name not in tasks:
            tasks[name] = get_task(name, **options.get(name, {}))
        verdict = tasks[name].verify(completion, answer)
        out.append(None if verdict.correct else f"verifier:{verdict.reason}")
    return out


def verify_blocks(columns: dict[str, list], rows: list[int]) -> list[tuple[list[str], list[str], list[str]]]:
    """The (tasks, completions, answers) of `rows`, in blocks of `VERIFY_BLOCK` rows (`_verify_block`'s input)."""
    return [
        tuple(
            [columns[name][i] for i in rows[start : start + VERIFY_BLOCK]] for name in ("task", "completion", "answer")
        )
        for start in range(0, len(rows), VERIFY_BLOCK)
    ]


def _identity(prompt: str, meta: Any) -> tuple[str, str]:
    """(exact, normalised) identity of a row's prompt; an imported conversation's earlier turns (meta.context)
    are part of it, so two conversations that end with the same question are not duplicates."""
    try:
        context = demo_context(meta)
    except (ValueError, TypeError, KeyError, AttributeError):
        context = []
    if not context:
        return prompt.strip(), normalise_prompt(prompt)
    messages = [*context, {"role": "user", "content": prompt}]
    return json.dumps([[m["role"], m["content"].strip()] for m in messages]), normalise_prompt(messages)


def _integrity_suspects(frame: pd.DataFrame, columns: dict[str, list], limits: dict[str, int]) -> set[int]:
    """Rows that may fail an integrity check (a superset: `_integrity` decides), found column by column: by Arrow's
    compute functions on text columns (most files), else in Python (`not v.strip()` is `v == "" or v.isspace()`
    without building a new string)."""
    suspects: set[int] = set()
    texts = {name: _arrow_text(frame[name]) for name in TEXT_FIELDS}  # each column converted once
    for name, text in texts.items():
        if text is None:
            suspects.update(i for i, v in enumerate(columns[name]) if type(v) is not str or not v or v.isspace())
        else:
            blank = pc.or_kleene(pc.is_null(text), pc.match_substring_regex(text, BLANK))
            suspects.update(np.flatnonzero(blank.to_numpy(zero_copy_only=False)).tolist())
    for name, limit in limits.items():
        text = texts[name]
        if text is None:
            suspects.update(i for i, v in enumerate(columns[name]) if type(v) is str and len(v) > limit)
        else:
            too_long = pc.fill_null(pc.greater(pc.utf8_length(text), limit), False)
            suspects.update(np.flatnonzero(too_long.to_numpy(zero_copy_only=False)).tolist())
    if frame["correct"].dtype != bool:
        suspects.update(i for i, v in enumerate(columns["correct"]) if type(v) is not bool)
    return suspects


def _arrow_text(column: pd.Series) -> pa.Array | None:
    """The column as one Arrow text array when it is one (pandas' Arrow-backed strings), else None."""
    if not isinstance(column.dtype, pd.StringDtype):
        return None
    text = pa.array(column)
    text = text.combine_chunks() if isinstance(text, pa.ChunkedArray) else text
    return text if pa.types.is_string(text.type) or pa.types.is_large_string(text.type) else None


def _integrity(row: Any, limits: dict[str, int]) -> tuple[str | None, str | None]:
    for name in TEXT_FIELDS:
        value = getattr(row, name)
        if not isinstance(value, str):
            return f"wrong_type:{type(value).__name__}", name
        if not value.strip():
            return "empty", name
    if not isinstance(row.correct, (bool, np.bool_)):
        return f"wrong_type:{type(row.correct).__name__}", "correct"
    for name, limit in limits.items():
        if len(getattr(row, name)) > limit:
            return f"too_long:>{limit}", name
    return None, None


def statistics(checked: pd.DataFrame) -> dict[str, Any]:
    # Counted column by column on the kept rows' mask: selecting whole kept and rejected tables took ~1 s at 1M rows.
    kept = checked["reason"].isna().to_numpy()
    n_kept = int(kept.sum())
    n_rejected = len(checked) - n_kept
    return {
        "n_rows": int(len(checked)),
        "n_kept": n_kept,
        "n_rejected": n_rejected,
        "rejected_fraction": float(n_rejected / max(len(checked), 1)),
        "rejections_by_reason": _counts(checked["reason"][~kept]),
        "kept_by_difficulty": _counts(checked["difficulty"][kept]),
        "kept_by_task": _counts(checked["task"][kept]),
        "kept_by_expert": _counts(checked["expert"][kept]),
        "prompt_chars": _describe(checked["prompt"][kept].str.len()),
        "completion_chars": _describe(checked["completion"][kept].str.len()),
    }


def _counts(values: pd.Series) -> dict[str, int]:
    """Rows per value, by value (values as text)."""
    counts: Counter = Counter()
    for value, n in values.astype(object).value_counts(dropna=False).items():
        counts[str(value)] += int(n)
    return dict(sorted(counts.items()))


def _describe(lengths: pd.Series) -> dict[str, float]:
    if lengths.empty:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}


def check_gates(stats: dict[str, Any], gates: dict[str, Any]) -> list[str]:
    """Messages for every failed gate (empty when all pass)."""
    failed = []
    if stats["rejected_fraction"] > gates["max_rejected_fraction"]:
        failed.append(
            f"gate max_rejected_fraction: {stats['n_rejected']}/{stats['n_rows']} rows rejected "
            f"({stats['rejected_fraction']:.1%}) > {gates['max_rejected_fraction']:.1%}; "
            f"reasons: {stats['rejections_by_reason']}"
        )
    if stats["n_kept"] < gates["min_rows"]:
        failed.append(f"gate min_rows: {stats['n_kept']} rows kept < {gates['min_rows']}")
    for level, count in stats["kept_by_difficulty"].items():
        if count < gates["min_rows_per_difficulty"]:
            failed.append(
                f"gate min_rows_per_difficulty: difficulty {level!r} has {count} rows < "
                f"{gates['min_rows_per_difficulty']}"
            )
    return failed


def plot_validation(checked: pd.DataFrame, stats: dict[str, Any], plot_paths: dict[str, str]) -> None:
    from sftdpo.plots import pyplot, save_figure

    plt = pyplot()

    kept = checked["reason"].isna().to_numpy()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    levels = list(stats["kept_by_difficulty"])
    ax.bar(levels, [stats["kept_by_difficulty"][lv] for lv in levels], color="#4c72b0")
    ax.set(xlabel="difficulty", ylabel="kept demonstrations", title="Demonstrations per difficulty")
    save_figure(fig, plot_paths["difficulty"])

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(checked["completion"][kept].str.len(), bins=30, color="#55a868", alpha=0.8, label="completion")
    ax.hist(checked["prompt"][kept].str.len(), bins=30, color="#c44e52", alpha=0.8, label="prompt")
    ax.set(xlabel="characters", ylabel="rows", title="Lengths of kept demonstrations")
    ax.legend()
    save_figure(fig, plot_paths["lengths"])

    fig, ax = plt.subplots(figsize=(6, 3.5))
    reasons = stats["rejections_by_reason"] or {"(none)": 0}
    ax.barh(list(reasons), list(reasons.values()), color="#dd8452")
    ax.set(xlabel="rows", title=f"Rejections ({stats['n_rejected']} of {stats['n_rows']})")
    save_figure(fig, plot_paths["rejections"])


def import_bad_rows(summary_paths: list[str]) -> list[dict[str, Any]]:
    """The rows the importer could not read, from the collect shard summaries (none for other experts)."""
    rows = []
    for path in summary_paths:
        files = read_json(path).get("files") or {}
        for bad in files.get("bad_records", []):
            rows.append(bad)
    return rows


def reason_kind(reason: str) -> str:
    """The kind of a bad-row reason, without its particulars: 'not valid JSON (..., column 2)' -> 'not valid JSON'."""
    cut = min((i for i in (reason.find(" ("), reason.find(": "), reason.find("; ")) if i >= 0), default=len(reason))
    return reason[:cut]


def _bad_kind(bad: dict[str, Any]) -> str:
    kind = reason_kind(bad["reason"])
    return f"{bad['field']}: {kind}" if bad.get("field") else kind


def _source(meta: Any) -> tuple[str | None, int | None]:
    """(file, line or row) a demonstration came from, when its meta records one (imports, GSM8K problems)."""
    if not isinstance(meta, str) or ("file" not in meta and "\\u" not in meta):
        return None, None  # no "file" key, even escaped: most rows, and no JSON to parse
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError:
        return None, None
    for key in ("source", "problem"):
        where = meta.get(key) if isinstance(meta.get(key), dict) else {}
        if where.get("file"):
            return str(where["file"]), where.get("line", where.get("row"))
    return None, None


def rejected_table(checked: pd.DataFrame, bad_rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rejected demonstrations and unreadable import rows in one table: the demo columns as text, `reason`,
    `field`, and `file`/`line` where the row came from (`detail`: an import row's full reason)."""
    # Rejected rows may hold values of the wrong type; keep them, as text, so nothing is lost.
    rejected = checked[checked["reason"].notna()].astype({name: str for name in TEXT_FIELDS}).reset_index(drop=True)
    sources = [_source(meta) for meta in rejected["meta"].tolist()]  # a list: no pandas access a row
    rejected["file"] = pd.Series([f for f, _ in sources], dtype=object)
    rejected["line"] = pd.array([line for _, line in sources], dtype="Int64")
    rejected["detail"] = pd.Series([None] * len(rejected), dtype=object)
    imported = pd.DataFrame(
        [
            {
                **{name: "" for name in TEXT_FIELDS},
                "correct": False,
                "meta": "{}",
                "reason": f"import:{reason_kind(b['reason'])}",
                "field": b.get("field"),
                "file": b["file"],
                "line": b.get("line", b.get("row")),
                "detail": b["reason"],
            }
            for b in bad_rows
        ],
        columns=list(rejected.columns),
    ).astype({"line": "Int64"})
    return rejected if imported.empty else pd.concat([rejected, imported], ignore_index=True)


def summary_line(stats: dict[str, Any], rejected_path: str) -> str:
    """One line for the console: kept, rejected and quarantined rows by reason, and where to look."""
    line = f"validate: {stats['n_kept']} of {stats['n_rows']} demonstrations kept"
    if stats["n_rejected"]:
        line += f", {stats['n_rejected']} rejected {stats['rejections_by_reason']}"
    bad = stats["import"]["n_bad_rows"]
    if bad:
        line += f"; {bad} import rows quarantined {stats['import']['bad_by_reason']}"
    if stats["n_rejected"] or bad:
        line += f" (file, line and reason of each: {rejected_path})"
    return line


def validate(
    *,
    demos_path: str,
    validated_path: str,
    rejected_path: str,
    report_path: str,
    plot_paths: dict[str, str],
    gates: dict[str, Any],
    checks_paths: list[str] | None = None,
    task_options: dict[str, dict[str, Any]] | None = None,
    max_prompt_chars: int | None = None,
    max_completion_chars: int | None = None,
    import_summaries: list[str] | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """`checks_paths`: the demo shards' `row_checks` (rule validate_shard); without them this process makes them
    (from `task_options`, the two length limits and `workers` verifier processes). The outputs are the same."""
    table = pq.read_table(demos_path)
    frame = table.to_pandas()  # text columns: no copy (pandas' Arrow-backed strings)
    bad_rows = import_bad_rows(import_summaries or [])
    if checks_paths is not None:
        checked = decide(frame, read_checks(checks_paths, frame, demos_path))
    else:
        checked = check_rows(
            frame,
            source=demos_path,
            task_options=task_options or {},
            max_prompt_chars=max_prompt_chars,
            max_completion_chars=max_completion_chars,
            workers=workers,
        )
    stats = statistics(checked)
    stats["import"] = {
        "n_bad_rows": len(bad_rows),
        "bad_by_reason": dict(sorted(Counter(_bad_kind(b) for b in bad_rows).items())),
    }
    failed = check_gates(stats, gates)
    stats["gates"] = {"config": gates, "failed": failed, "passed": not failed}
    log.info("validation: %s", stats)
    if failed:
        raise QualityGateError(f"validation of {demos_path} failed:\n  " + "\n  ".join(failed))
    # The kept rows of the demos table as read (its columns and schema), in a third of the time selecting them from
    # the frame took; in one chunk a column, as that selection was, which the parquet writer's pages follow.
    kept = table.filter(pa.array(checked["reason"].isna().to_numpy())).combine_chunks()
    write_arrow(kept, validated_path, row_group_rows=VALIDATED_ROW_GROUP)
    write_parquet(rejected_table(checked, bad_rows), rejected_path)
    plot_validation(checked, stats, plot_paths)
    write_json(stats, report_path)
    line = summary_line(stats, rejected_path)
    log.info(line)
    print(line, flush=True)  # the console: the rule's stdout is Snakemake's
    return stats
