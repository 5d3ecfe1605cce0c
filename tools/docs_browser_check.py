"""Open the built documentation site in headless Chromium and check that its pages render.

    python tools/docs_browser_check.py [build/docs/site] [--out build/docs/screenshots]

For each page (default: the home page and the kernel results page) it checks
that the page loads (HTTP 200), that every image loaded (``complete`` with a
non-zero natural width), that at least ``--min-images`` did, and that nothing
was logged as an error: no console error, no uncaught exception, no failed or
4xx/5xx request. It writes a full-page screenshot of each page and
``report.json`` to ``--out``. Exit status: 0 all pages pass, 1 a check failed,
2 no browser (or it would not start) while ``CI`` is set; without ``CI`` a
missing browser prints ``SKIPPED: ...`` and exits 0.

It drives Chromium over the DevTools protocol on a pipe
(``--remote-debugging-pipe``), standard library only: no driver, no
Selenium or Playwright, and no network but a local HTTP server on 127.0.0.1
that serves the site folder.
"""

from __future__ import annotations

import argparse
import base64
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chromium-headless-shell")
DEFAULT_PAGES = (("home", "", 1), ("results-kernels", "results/kernels/", 2))
SCROLL_JS = """(async () => { for (let y = 0; y < document.body.scrollHeight; y += 600) {
    window.scrollTo(0, y); await new Promise(r => setTimeout(r, 50)); } window.scrollTo(0, 0); })()"""
IMAGES_JS = """(() => Array.from(document.images).map(i => ({
    src: i.currentSrc || i.src, complete: i.complete, width: i.naturalWidth})))()"""


def find_browser() -> str | None:
    if os.environ.get("LUMO_CHROMIUM"):
        return os.environ["LUMO_CHROMIUM"]
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    return None


class Browser:
    """Chromium with the DevTools protocol on fds 3 (its input) and 4 (its output)."""

    def __init__(self, binary: str, profile: str, timeout: float) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def child_fds() -> None:  # the protocol's fixed descriptors (copied high first: a pipe may sit on 3 or 4)
            r, w = os.dup(cmd_r) + 100, os.dup(out_w) + 100
            os.dup2(cmd_r, r)
            os.dup2(out_w, w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        args = [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
                "--mute-audio", "--window-size=1280,900", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=child_fds, close_fds=True,
                                     pass_fds=(3, 4))
        os.close(cmd_r)
        os.close(out_w)
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self._out_r, 1 << 16)
            if not chunk:
                err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
                raise RuntimeError(f"the browser closed its DevTools pipe (exit {self.proc.poll()}): {err}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_quiet(self, quiet: float, limit: float) -> None:
        """Collect events until none came for ``quiet`` seconds (or ``limit`` passed)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            try:
                self.events.append(self._read_message(min(end, time.monotonic() + quiet)))
            except TimeoutError:
                return

    def wait_for(self, method: str, limit: float) -> bool:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if any(e.get("method") == method for e in self.events):
                return True
            try:
                self.events.append(self._read_message(end))
            except TimeoutError:
                break
        return any(e.get("method") == method for e in self.events)

    def close(self) -> None:
        try:
            os.write(self._cmd_w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        for fd in (self._cmd_w, self._out_r):
            os.close(fd)


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, failed or 4xx/5xx requests among the protocol events."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"uncaught exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log error: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not p.get("canceled"):
            out.append(f"request failed: {p.get('errorText')} (request {p.get('requestId')})")
        elif method == "Network.responseReceived" and p.get("response", {}).get("status", 200) >= 400:
            out.append(f"HTTP {p['response']['status']}: {p['response'].get('url')}")
    return out


def check_page(browser: Browser, base: str, name: str, path: str, min_images: int, out: Path) -> dict[str, Any]:
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.send(f"{domain}.enable", session=session)
    browser.events.clear()
    url = base + path
    nav = browser.send("Page.navigate", {"url": url}, session=session)
    problems = [f"navigation failed: {nav['errorText']}"] if nav.get("errorText") else []
    if not browser.wait_for("Page.loadEventFired", 30):
        problems.append("the load event did not fire within 30 s")
    browser.wait_quiet(1.0, 10)
    # Scroll through the page so that lazily loaded images load, then back to the top for the screenshot.
    browser.send("Runtime.evaluate", {"expression": SCROLL_JS, "awaitPromise": True}, session=session)
    browser.wait_quiet(1.0, 20)
    images = browser.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                          session=session)["result"].get("value", [])
    title = browser.send("Runtime.evaluate", {"expression": "document.title", "returnByValue": True},
                         session=session)["result"].get("value")
    problems += _problems([e for e in browser.events if e.get("sessionId") == session])
    broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
    problems += [f"image did not load: {src}" for src in broken]
    if len(images) - len(broken) < min_images:
        problems.append(f"expected at least {min_images} image(s) to load, found {len(images) - len(broken)}")
    metrics = browser.send("Page.getLayoutMetrics", session=session)
    size = metrics.get("cssContentSize") or metrics.get("contentSize")
    clip = {"x": 0, "y": 0, "width": min(size["width"], 1600), "height": min(size["height"], 12000), "scale": 1}
    shot = browser.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True},
                        session=session)
    screenshot = out / f"{name}.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    browser.send("Target.closeTarget", {"targetId": target})
    return {"page": name, "url": path or "/", "title": title, "images": len(images), "broken_images": broken,
            "problems": problems, "screenshot": screenshot.name, "pass": not problems}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, nargs="?", default=Path("build/docs/site"),
                        help="the built site (default build/docs/site, where mkdocs build writes it)")
    parser.add_argument("--out", type=Path, default=Path("build/docs/screenshots"),
                        help="screenshots and report.json (default build/docs/screenshots)")
    parser.add_argument("--page", action="append", metavar="NAME=PATH[:MIN_IMAGES]",
                        help="a page to check instead of the defaults, e.g. home=:1 or kernels=results/kernels/:2")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one protocol answer")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"docs_browser_check: {args.site}/index.html not found: build the site first "
              f"(mkdocs build --strict)", file=sys.stderr)
        return 2
    pages = list(DEFAULT_PAGES)
    if args.page:
        pages = []
        for spec in args.page:
            name, _, rest = spec.partition("=")
            path, _, count = rest.partition(":")
            pages.append((name, path, int(count or 0)))
    binary = find_browser()
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if binary is None:
        msg = (f"no Chromium found ({', '.join(BROWSERS)} or $LUMO_CHROMIUM); "
               "install it with `apt-get install chromium`")
        if in_ci:
            print(f"docs_browser_check: FAILED: {msg} (CI is set, so the check may not be skipped)", file=sys.stderr)
            return 2
        print(f"docs_browser_check: SKIPPED: {msg}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(binary, profile, args.timeout)  # before the server thread: it forks
        handler = functools.partial(_QuietHandler, directory=str(args.site))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        results = []
        try:
            for name, path, min_images in pages:
                results.append(check_page(browser, base, name, path, min_images, args.out))
        except (RuntimeError, TimeoutError) as e:
            print(f"docs_browser_check: FAILED: the browser did not answer: {e}", file=sys.stderr)
            return 2 if in_ci else 1
        finally:
            browser.close()
            server.shutdown()
            server.server_close()
    (args.out / "report.json").write_text(json.dumps({"browser": binary, "pages": results}, indent=1) + "\n")
    for r in results:
        status = "ok  " if r["pass"] else "FAIL"
        print(f"{status} {r['page']:<18} /{r['url'].lstrip('/')}  {r['images']} image(s)  -> {args.out / r['screenshot']}")
        for p in r["problems"]:
            print(f"     {p}")
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
