"""Headless Chromium for tests that look at HTML as a person's browser shows it (Debian: chromium-headless-shell)."""

import html
import os
import re
import shutil
import subprocess

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")


def browser() -> str:
    """The headless browser's path; skips (fails in CI, where .ci/run installs it) when none is installed."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    message = "no headless Chromium on PATH (apt-get install chromium-headless-shell)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def rendered_dom(url: str) -> str:
    """The page's DOM after its scripts ran, as Chromium serialises it."""
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return proc.stdout


def visible_text(dom: str) -> str:
    """The DOM's text without scripts and styles (so numbers only count where the page shows them)."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))
