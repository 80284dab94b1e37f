"""Tables for people: one `Table` (title, columns, rows, note) rendered as markdown, HTML or console text.

The report builds its tables from summary.json and the stages' reports; this module only lays them out.
Cells are written as given (format numbers before), and HTML cells are escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

# Scoped to the `sftdpo` class: the fragment is also embedded in the Snakemake report's front page.
STYLE = """
.sftdpo { font-family: system-ui, sans-serif; font-size: 14px; }
.sftdpo table { border-collapse: collapse; margin: 0.4em 0 1.2em 0; }
.sftdpo th, .sftdpo td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
.sftdpo th { background: #eef2f6; }
.sftdpo td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sftdpo pre { margin: 0; white-space: pre-wrap; font-size: 12px; }
.sftdpo h2 { font-size: 16px; margin: 0.8em 0 0.2em 0; }
.sftdpo p.note { color: #555; margin: 0 0 0.3em 0; }
"""


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""


def fmt(value: Any, spec: str = ".3f") -> str:
    """A number as text (`-` for a missing one); anything else as str."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def ci(pair: list[float] | None, spec: str = ".3f") -> str:
    return "-" if not pair else f"[{format(pair[0], spec)}, {format(pair[1], spec)}]"


def markdown(tables: list[Table]) -> str:
    return "\n".join(_markdown_table(t) for t in tables)


def _markdown_table(table: Table) -> str:
    lines = [f"## {table.title}", ""]
    if table.note:
        lines += [table.note, ""]
    if not table.rows:
        return "\n".join(lines + ["(none)", ""])
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    for row in table.rows:
        lines.append("| " + " | ".join(_markdown_cell(c) for c in row) + " |")
    return "\n".join(lines + [""])


def _markdown_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", "<br>")


def text(table: Table) -> str:
    """Plain text with aligned columns, for the console."""
    cells = [table.columns, *([fmt(c) for c in row] for row in table.rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def model_card(*, title: str, intro: str, tags: list[str], tables: list[Table], config: dict[str, Any],
               base_model: str | None = None) -> str:  # fmt: skip
    """A Hugging Face model card (README.md of a model directory): front matter, what the model is, the
    tables (lineage, data, metrics) and the config it was made with."""
    import yaml

    front = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["sftdpo", *tags]}
    if base_model:
        front["base_model"] = base_model
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", "", intro, "",
        markdown(tables), "## Configuration", "", "```yaml", yaml.safe_dump(config, sort_keys=True).strip(), "```", "",
    ])  # fmt: skip


def html_fragment(tables: list[Table]) -> str:
    """A `<div class="sftdpo">` with the tables (no document around it)."""
    return '<div class="sftdpo">\n' + "\n".join(_html_table(t) for t in tables) + "</div>\n"


def html_page(tables: list[Table], title: str) -> str:
    """A self-contained HTML document (the Snakemake report shows it in a frame)."""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{html_fragment(tables)}</body></html>\n"
    )


def _html_table(table: Table) -> str:
    parts = [f"<h2>{html.escape(table.title)}</h2>"]
    if table.note:
        parts.append(f'<p class="note">{html.escape(table.note)}</p>')
    if not table.rows:
        return "\n".join(parts + ["<p>(none)</p>"]) + "\n"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in table.rows)
    parts.append(f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>")
    return "\n".join(parts) + "\n"


def _html_cell(value: Any) -> str:
    text = html.escape(fmt(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{text}</td>'
    if "\n" in text:
        return f"<td><pre>{text}</pre></td>"
    return f"<td>{text}</td>"
