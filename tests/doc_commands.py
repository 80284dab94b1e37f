"""The commands the documentation shows, and how a test runs each one (issue 17).

Sources: fenced shell blocks (```bash, sh, shell, console) of README.md and docs/*.md, untagged
fenced blocks whose line starts with a command, inline `code` spans that start with a command
word and carry arguments, and the indented `#   command` lines of the leading comment block of
config/examples/*.yaml, profiles/*/config.yaml and tests/slurm/overlay.yaml.

RULES maps each command form to a mode (first match wins); tests/test_doc_commands.py runs
every mode but `slurm`, which tests/test_slurm.py runs against its finished cluster run. A
command that matches no rule fails test_every_documented_command_has_a_rule: a new documented
command needs a rule (and so a test) before it lands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MARKDOWN = ["README.md", "docs/*.md"]
YAML_HEADERS = ["config/examples/*.yaml", "profiles/*/config.yaml", "tests/slurm/overlay.yaml"]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# First words that make an inline span or an untagged block line a command.
COMMAND_WORDS = (
    "snakemake",
    ".venv/bin/",
    "make",
    "pytest",
    "python",
    "pip",
    "sacct",
    "squeue",
    "scancel",
    "sbatch",
    "tail",
    "accelerate",
    "export",
    "bash",
    "git",
    "vllm",
    "transformers",
)

SNAKEMAKE = r"^(?:SFTDPO_\w+=\S+ )*(?:\.venv/bin/)?snakemake\b"
# (pattern, mode): the first pattern that matches (re.search) decides. Modes:
#   env         `export VAR=...`: run as part of the later commands of its block
#   make-n      `make ...` as `make -n ...` (the targets install or recurse into the test suite)
#   pipe        run as written through bash (read-only snakemake output into another tool)
#   conda       `--sdm conda`: dry run; without conda on PATH, the dry run without --sdm conda
#   after-run   run as written in a copy of a finished tiny run (needs results)
#   as-is       run as written (read-only: graphs, lint, summary, unlock, already -n)
#   dry-run     run with -n appended (would run jobs: locally for minutes, or on Slurm / GPUs)
#   collect     pytest ... --collect-only (running it would recurse into the suite)
#   pip-dry     pip install --dry-run --no-deps ... (installs nothing)
#   accelerate  parsed by accelerate's own launch parser (needs several GPUs to run)
#   help        a benchmark that runs for minutes: the script with --help (it imports, its options parse)
#   serve-help  a model server (runs until stopped): its --help lists every option the command uses; skipped
#               when the tool is not installed (vllm: the gpu extra). tests/test_teacher_server.py runs one.
#   mention     a tool's name with its subcommand, not a command line
#   slurm       needs the Slurm cluster: run by tests/test_slurm.py after its run
RULES: list[tuple[str, str]] = [
    (r"^export \w+=", "env"),
    (r"^make\b", "make-n"),
    (SNAKEMAKE + r".*\|", "pipe"),
    (SNAKEMAKE + r".*--sdm conda", "conda"),
    (SNAKEMAKE + r".*--report\b", "after-run"),
    (SNAKEMAKE + r".*(--rulegraph|--dag|--lint|--summary|--unlock|--list-rules|(^| )-n( |$))", "as-is"),
    (SNAKEMAKE, "dry-run"),
    (r"^(\.venv/bin/)?(python -m )?pytest\b", "collect"),
    (r"^\.venv/bin/python -m sftdpo\.plan\b", "as-is"),
    (r"^\.venv/bin/python benchmarks/rule_times\.py\b", "after-run"),
    (r"^(\.venv/bin/)?python -m sftdpo\.lineage\b", "after-run"),
    (r"^\.venv/bin/python benchmarks/\w+\.py\b", "help"),
    (r"^pip install ", "pip-dry"),
    (r"^(\.venv/bin/)?pip cache dir$", "as-is"),
    (r"^accelerate launch --", "accelerate"),
    (r"^(vllm|transformers) serve ", "serve-help"),
    (r"^(vllm|transformers) serve$", "mention"),
    (r"^accelerate launch$", "mention"),
    (r"^sbatch -[-\w=]+$", "mention"),
    (r"^(sacct|squeue|scancel|tail -f) ", "slurm"),
]
# Placeholders in documented commands and what the tests put in their place.
PLACEHOLDERS = {
    "my.yaml": "tests/config/tiny.yaml",
    "my-run.yaml": "tests/config/tiny.yaml",
    "site.yaml": "tests/slurm/overlay.yaml",
    "<free port>": "29500",
}


@dataclass(frozen=True)
class DocCommand:
    source: str  # "README.md:123"
    command: str  # as documented: comment stripped, continuation lines joined
    exports: tuple[str, ...] = field(default=())  # `export` lines before it in its block

    @property
    def mode(self) -> str | None:
        return mode_of(self.command)

    def script(self, extra: dict[str, str] | None = None) -> str:
        """A bash script: the block's exports, then the command with placeholders filled."""
        text = "\n".join([*self.exports, self.command])
        for key, value in {**PLACEHOLDERS, **(extra or {})}.items():
            text = text.replace(key, value)
        return text


def mode_of(command: str) -> str | None:
    for pattern, mode in RULES:
        if re.search(pattern, command):
            return mode
    return None


def strip_comment(line: str) -> str:
    """`line` without a trailing shell comment (a `#` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Join backslash continuations; keep the first line's number."""
    out, buf, start = [], "", None
    for number, line in lines:
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1].rstrip() + " "
            continue
        out.append((start, re.sub(r"\s+", " ", (buf + line).strip())))
        buf, start = "", None
    return out


def _is_command(text: str) -> bool:
    """Starts with a command word, after any `VAR=value ` assignments."""
    return re.sub(r"^(\w+=\S+ )+", "", text).startswith(COMMAND_WORDS)


def from_markdown(path: Path, root: Path = ROOT) -> list[DocCommand]:
    rel = path.relative_to(root).as_posix()
    commands: list[DocCommand] = []
    lines = path.read_text().splitlines()
    block: list[tuple[int, str]] | None = None
    lang = ""
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and block is None:
            block, lang = [], fence.group(1).lower()
            continue
        if fence and block is not None:
            exports: list[str] = []
            for start, text in _logical_lines(block):
                text = strip_comment(text)
                if not text:
                    continue
                if lang in SHELL_LANGS or (not lang and _is_command(text)):
                    commands.append(DocCommand(f"{rel}:{start}", text, tuple(exports)))
                    if text.startswith("export "):
                        exports.append(text)
            block = None
            continue
        if block is not None:
            block.append((number, line))
            continue
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):
            span = span.strip()
            if " " in span and _is_command(span):
                commands.append(DocCommand(f"{rel}:{number}", span))
    return commands


def from_yaml_header(path: Path, root: Path = ROOT) -> list[DocCommand]:
    """`#   command` lines (3+ spaces after the #) of the file's leading comment block."""
    rel = path.relative_to(root).as_posix()
    commands = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("#"):
            break
        m = re.match(r"^#\s{3,}(\S.*)$", line)
        if m and _is_command(m.group(1)):
            commands.append(DocCommand(f"{rel}:{number}", strip_comment(m.group(1))))
    return commands


def documented_commands(root: Path = ROOT) -> list[DocCommand]:
    commands = []
    for pattern in MARKDOWN:
        for path in sorted(root.glob(pattern)):
            commands += from_markdown(path, root)
    for pattern in YAML_HEADERS:
        for path in sorted(root.glob(pattern)):
            commands += from_yaml_header(path, root)
    return commands


def copy_project(dest: Path, root: Path = ROOT) -> Path:
    """A fresh checkout of the working tree: git's tracked and untracked-not-ignored files
    (so uncommitted edits count, results/ and .venv/ do not), symlinks kept as symlinks, plus
    `.venv` linked to the environment running the tests (what the README's set-up makes)."""
    files = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    dest.mkdir(parents=True, exist_ok=True)
    for name in filter(None, files.decode().split("\0")):
        src = root / name
        if not (src.exists() or src.is_symlink()):
            continue  # deleted in the working tree, not yet in the index
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    (dest / ".venv").symlink_to(Path(sys.prefix))
    return dest


def venv_bin() -> Path:
    return Path(sys.prefix) / "bin"
