"""The README's measured tables: each lives between two markers and is rewritten by the benchmark that measures it.

<!-- <name>: begin (<the command that writes it>) -->
...table...
<!-- <name>: end -->
"""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def markers(name: str, command: str) -> tuple[str, str]:
    return f"<!-- {name}: begin ({command}) -->", f"<!-- {name}: end -->"


def current_table(name: str, command: str, text: str | None = None) -> str:
    """The table now in the README, between the markers."""
    begin, end = markers(name, command)
    text = README.read_text() if text is None else text
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def replace_table(name: str, table: str, command: str) -> None:
    """Rewrite the README's table `name` (the markers must be there already)."""
    begin, end = markers(name, command)
    text = README.read_text()
    if begin not in text:
        raise SystemExit(f"README.md has no {begin!r} marker: add the two markers where the table goes")
    before, rest = text.split(begin, 1)
    README.write_text(f"{before}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}")


def add_save_options(parser) -> None:
    """--save and --readme, as every campaign benchmark takes them."""
    parser.add_argument("--save", action="store_true", help="keep the record and rewrite the README table")
    parser.add_argument("--readme", action="store_true", help="only rewrite the README table from the saved record")


def rewrite_from_saved(table: tuple[str, str], render, saved: Path) -> None:
    """`--readme`: the README table `table` (name, command) rendered from the saved JSON record."""
    import json

    replace_table(table[0], render(json.loads(saved.read_text())), table[1])
