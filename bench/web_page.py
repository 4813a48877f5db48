"""The web pages (issue 20) measured in Debian's chromium: what a first visit transfers and how soon the page answers
input, and (with --screenshots) the pictures of docs/ui/ that the README shows.

    .venv/bin/python bench/web_page.py                          # smollm2: sizes and times, ~1 minute
    .venv/bin/python bench/web_page.py --screenshots docs/ui    # and the four screenshots, ~3 minutes

A real `hearth serve MODEL --capture` on a free port with a HEARTH_HOME of its own. Each visit is a fresh browser
context (no cache, empty storage). "Transferred" is the sum of the Resource Timing API's transferSize (headers and
gzip'd bodies) of the document and every file it loads; "ready" is the page's own mark `hearth-ready`, set when its
modules have run and its first API answers (the models, the server's status) are in: from then on it answers input.
Times are the median of --visits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from serve_kit import ServerProcess  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
MEASURE = """() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const res = performance.getEntriesByType('resource');
    return {files: res.length + 1, transfer: nav.transferSize + res.reduce((n, r) => n + r.transferSize, 0),
            body: nav.decodedBodySize + res.reduce((n, r) => n + r.decodedBodySize, 0),
            dcl: nav.domContentLoadedEventEnd, ready: performance.getEntriesByName('hearth-ready')[0].startTime};
}"""
QUESTIONS = [
    "Give me three tips for a good night's sleep.",
    "Write a Python function that checks whether a word is a palindrome.",
]


def visit(browser, url: str, **context) -> dict:
    ctx = browser.new_context(**context)
    try:
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_selector("html[data-ready=true]", state="attached")
        return page.evaluate(MEASURE)
    finally:
        ctx.close()


def measure(browser, base: str, visits: int) -> None:
    for path in ("/", "/dashboard"):
        runs = [visit(browser, base + path, viewport={"width": 1280, "height": 800}) for _ in range(visits)]
        first = runs[0]
        print(f"{path:<11} {first['files']:>2} files  {first['transfer'] / 1024:6.1f} KiB transferred "
              f"({first['body'] / 1024:6.1f} KiB uncompressed)  DOMContentLoaded "
              f"{statistics.median(r['dcl'] for r in runs):5.0f} ms  ready {statistics.median(r['ready'] for r in runs):5.0f} ms"
              f"  (median of {visits})")


def traffic(base: str, seconds: float) -> None:
    """Two users asking for a while, so that the dashboard has minutes of tokens/s to draw."""
    end = time.monotonic() + seconds

    def user(i: int) -> None:
        n = 0
        while time.monotonic() < end:
            httpx.post(base + "/v1/chat/completions", timeout=120, json={
                "messages": [{"role": "user", "content": f"Tell me a fact about the number {i * 100 + n}."}],
                "max_tokens": 48 + 16 * (n % 4), "stream": False})
            n += 1
            time.sleep(1.5 * i)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(user, (1, 2)))


def screenshots(browser, base: str, out: Path, seconds: float) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    traffic(base, seconds)

    def save(page, name: str, full: bool = False) -> None:
        path = out / f"{name}.png"
        page.evaluate("document.activeElement && document.activeElement.blur()")
        page.screenshot(path=str(path), full_page=full)
        # a 256-colour palette: a fraction of the bytes, no visible loss for a page of flat colours and text
        Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")

    for name, viewport, scale in (("desktop", {"width": 1280, "height": 800}, 1),
                                  ("phone", {"width": 390, "height": 844}, 2)):
        ctx = browser.new_context(viewport=viewport, device_scale_factor=scale, is_mobile=scale > 1,
                                  has_touch=scale > 1, color_scheme="light")
        page = ctx.new_page()
        page.goto(base + "/")
        page.wait_for_selector("html[data-ready=true]", state="attached")
        page.click("#settings summary")
        page.fill("#temperature", "0")
        page.dispatch_event("#temperature", "change")
        page.click("#settings summary")
        for question in QUESTIONS if name == "desktop" else QUESTIONS[1:]:
            page.fill("#prompt", question)
            page.press("#prompt", "Enter")
            page.wait_for_selector(".msg.assistant:last-child[aria-busy=false]", timeout=120_000)
        if name == "desktop":
            page.get_by_role("button", name="Good answer").last.click()
        page.locator("#messages").evaluate("m => m.scrollTop = m.scrollHeight")
        save(page, f"chat-{name}")
        page.goto(base + "/dashboard")
        page.wait_for_selector("html[data-ready=true]", state="attached")
        page.wait_for_timeout(2500)
        save(page, f"dashboard-{name}", full=name == "desktop")
        ctx.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--visits", type=int, default=5)
    ap.add_argument("--screenshots", type=Path, help="write the chat and dashboard screenshots into this folder")
    ap.add_argument("--traffic-seconds", type=float, default=90, help="traffic before the screenshots")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp), "web", "--capture-db", str(Path(tmp) / "capture.sqlite"), model=args.model,
                               env={"HEARTH_HOME": tmp})
        try:
            server.wait_healthy()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM)
                measure(browser, server.url, args.visits)
                if args.screenshots:
                    screenshots(browser, server.url, args.screenshots, args.traffic_seconds)
                browser.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
