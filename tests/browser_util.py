"""Helpers for the headless-browser tests: Debian's Chromium driven by Python Playwright.

We never run `playwright install`; the system browser at /usr/bin/chromium is used
(`apt-get install -y chromium` provides it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

CHROMIUM = os.environ.get("NLWEB_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

REPO = Path(__file__).resolve().parent.parent
STATIC_DIR = REPO / "src" / "nlweb_local" / "server" / "static"
ARTIFACTS = REPO / "test-artifacts"


def launch_chromium(playwright):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("NLWEB_REQUIRE_BROWSER"):  # CI sets this: there the browser test must run
            pytest.fail(f"{CHROMIUM} is missing and NLWEB_REQUIRE_BROWSER is set (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


@dataclass
class PageWatch:
    """Collects what a page does: console errors, uncaught exceptions and the /ask requests it sends."""

    errors: list[str] = field(default_factory=list)
    asks: list[str] = field(default_factory=list)

    def attach(self, page) -> "PageWatch":
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("request", lambda r: self.asks.append(r.url) if urlparse(r.url).path == "/ask" else None)
        return self

    def ask_params(self, i: int = -1) -> dict[str, str]:
        """The query parameters of the i-th /ask request (single values)."""
        return {k: v[0] for k, v in parse_qs(urlparse(self.asks[i]).query, keep_blank_values=True).items()}

    def ask_prev(self, i: int = -1) -> list[str]:
        raw = self.ask_params(i).get("prev", "")
        return json.loads(raw) if raw else []


def sse(*messages: dict | str) -> str:
    """A v3 event-stream body: each dict becomes `data: <json>` plus a blank line; a str is sent raw."""
    return "".join(m if isinstance(m, str) else "data: " + json.dumps(m) + "\n\n" for m in messages)


# Sticky header and composer would be painted mid-page in a full-page capture: pin them for the shot.
UNSTICK = ".topbar, .composer-wrap { position: static !important; }"


def screenshot(page, name: str, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page, style=UNSTICK if full_page else None, animations="disabled")
    return path
