#!/usr/bin/env python3
"""Check that a built book page renders with no network, as a reader opening it from disk sees it.

Needs Debian's Chromium (not on a new machine; install it with):

    apt-get update && apt-get install -y chromium

Usage:

    python scripts/check_offline.py book/_build/html/book/chapters/01_baselines.html \
        --screenshot /tmp/x.png
    python scripts/check_offline.py book/_build/html/book/*.html --screenshot /tmp/p.png  # /tmp/p-<page>.png

Opens the page as file:// in headless Chromium (fresh profile, background networking off, every
host name made unresolvable so nothing can leak), drives it over the DevTools protocol on a pipe
(no port is opened), waits until its JavaScript has settled, and checks that:

- every request the page made, lazily loaded fonts and scripts included, was to a local file
  (or data:/blob:) and succeeded; no <script src>, <link href>, <img src>, CSS url() or @import
  in the page as built or as JavaScript left it points to http(s);
- if the page has math, MathJax typeset all of it: <mjx-container> elements, no TeX errors, no
  raw \\( \\[ $$ left in the text;
- every <img> is decoded (naturalWidth > 0);
- if the page has Jupyter widgets, the widget manager rendered each one (saved widget state);
- no uncaught JavaScript error, and no console error about loading or missing code.

It writes the DOM after JavaScript (--dump-dom) and a full-page screenshot (--screenshot) for a
person to look at. Exit status: 0 all checks pass, 1 a check failed (each on a line starting
with FAIL), 2 setup problem (no page, no Chromium, browser crashed). Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

# From the machine notes (/work/.library/env/machines/python.md): without the
# background-networking flags Chromium tries Google's hosts at every start.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
]

REMOTE = re.compile(r"^\s*(https?:)?//", re.I)
LOCAL_SCHEMES = {"file", "data", "blob", "about"}
# console.error/warn texts that mean code or data failed to load or run.
CONSOLE_BAD = re.compile(
    r"Uncaught|Failed to load|net::ERR_|CORS|Not allowed to load local|Refused to"
    r"|is not defined|Cannot read propert|Model state has errors|View state has errors"
    r"|Script error|Load timeout|requirejs|MathJax",
    re.I,
)

# --------------------------------------------------------------------------- HTML parsing


class Page(HTMLParser):
    """Collects what the checks need from an HTML document."""

    SKIP_TEXT = {"script", "style", "pre", "code", "textarea", "mjx-assistive-mml", "math"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.styles: list[str] = []
        self.scripts_inline: list[tuple[dict[str, str], str]] = []
        self.text: list[str] = []
        self._stack: list[str] = []
        self._cur: dict[str, str] = {}
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.tags.append((tag, a))
        if tag in self.VOID:
            return
        if tag in ("script", "style"):
            self._cur, self._buf = a, []
        self._stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, {k: (v or "") for k, v in attrs}))

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._stack and self._stack[-1] == tag:
            body = "".join(self._buf)
            (self.styles.append(body) if tag == "style"
             else self.scripts_inline.append((self._cur, body)))
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data):
        if self._stack and self._stack[-1] in ("script", "style"):
            self._buf.append(data)
        elif not any(t in self.SKIP_TEXT for t in self._stack):
            self.text.append(data)

    def find(self, tag: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag]

    def with_class(self, cls: str) -> list[tuple[str, dict[str, str]]]:
        return [(t, a) for t, a in self.tags if cls in a.get("class", "").split()]

    def inline_scripts_of_type(self, mime: str) -> int:
        return sum(1 for a, _ in self.scripts_inline if a.get("type") == mime)


def parse(html: str) -> Page:
    p = Page()
    p.feed(html)
    p.close()
    return p


def css_urls(css: str) -> list[str]:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)  # commented-out @imports load nothing
    urls = re.findall(r"url\(\s*['\"]?([^'\")]+)['\"]?\s*\)", css)
    return urls + re.findall(r"@import\s+['\"]([^'\"]+)['\"]", css)


def network_refs(page: Page) -> list[str]:
    bad = []
    for tag, attr in (("script", "src"), ("link", "href"), ("img", "src"), ("iframe", "src"),
                      ("source", "src"), ("video", "src"), ("audio", "src"), ("embed", "src"),
                      ("object", "data")):
        bad += [f"<{tag} {attr}={a[attr]}>" for a in page.find(tag) if REMOTE.match(a.get(attr, ""))]
    for a in page.find("img") + page.find("source"):
        bad += [f"srcset {i.strip()}" for i in a.get("srcset", "").split(",") if REMOTE.match(i.strip())]
    for css in page.styles:
        bad += [f"CSS url({u})" for u in css_urls(css) if REMOTE.match(u)]
    for _, a in page.tags:
        bad += [f"style attribute url({u})" for u in css_urls(a.get("style", "")) if REMOTE.match(u)]
    return bad


def missing_local(page: Page, page_url: str) -> list[str]:
    refs = [a.get("src", "") for a in page.find("script")]
    refs += [a.get("href", "") for a in page.find("link")
             if set(a.get("rel", "").lower().split()) & {"stylesheet", "preload", "modulepreload", "icon"}]
    refs += [a.get("src", "") for a in page.find("img")]
    out = []
    base = Path(url2pathname(urlsplit(page_url).path)).parent
    for ref in refs:
        parts = urlsplit(ref.strip())
        if not ref.strip() or (parts.scheme and parts.scheme != "file"):
            continue
        p = (Path(url2pathname(unquote(parts.path))) if parts.scheme == "file"
             else (base / url2pathname(unquote(parts.path))).resolve())
        if not p.is_file():
            out.append(f"{ref} -> {p}")
    return out


# --------------------------------------------------------------------------- DevTools pipe


class Chromium:
    """Headless Chromium driven over --remote-debugging-pipe (fd 3: commands, fd 4: replies)."""

    def __init__(self, binary: str, timeout: float):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="check-offline-profile-")
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w}', binary, *CHROMIUM_FLAGS,
             f"--user-data-dir={self.profile}", "about:blank"],
            pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=self.log, start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        self.events: list[dict] = []
        self._q: queue.Queue = queue.Queue()
        self._n = 0
        self.session: str | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._out_r, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                while b"\0" in buf:
                    msg, buf = buf.split(b"\0", 1)
                    self._q.put(json.loads(msg))
        self._q.put(None)

    def _next(self, deadline: float) -> dict | None:
        try:
            msg = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if msg is None:
            raise RuntimeError("Chromium closed the DevTools pipe (crashed?)")
        return msg

    def call(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._n += 1
        msg = {"id": self._n, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            m = self._next(deadline)
            if m is None:
                continue
            if m.get("id") == self._n:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)
        raise TimeoutError(f"{method}: no answer in {self.timeout} s")

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if (m := self._next(deadline)) is not None:
                self.events.append(m)

    def evaluate(self, expr: str, await_promise: bool = False):
        r = self.call("Runtime.evaluate", {"expression": expr, "returnByValue": True,
                                           "awaitPromise": await_promise})
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluate failed: {r['exceptionDetails'].get('text')}")
        return r.get("result", {}).get("value")

    def count(self, method: str) -> int:
        return sum(1 for e in self.events if e.get("method") == method)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close", session=False)
                self.proc.wait(timeout=10)
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this object started, only
            self.proc.wait()
        os.close(self._cmd_w)
        shutil.rmtree(self.profile, ignore_errors=True)

    def stderr_tail(self, n: int = 15) -> str:
        self.log.seek(0)
        lines = [ln for ln in self.log.read().decode(errors="replace").splitlines()
                 if not re.search(r"dbus|bluez|UPower|vaapi|drmGetDevices|sandbox_linux|"
                                  r"idle_linux|: \d+: \[: ", ln)]
        return "\n".join(lines[-n:])


def find_chromium(explicit: str | None) -> str | None:
    if explicit:
        return shutil.which(explicit)
    for cand in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and (path := shutil.which(cand)):
            return path
    return None


IMAGES_JS = """Array.from(document.images).map(i => ({src: i.currentSrc || i.src,
  complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"""
MATHJAX_READY_JS = """(async () => {
  const M = window.MathJax;
  if (!M || !M.startup || !M.startup.promise) return M ? 'configured, not loaded' : 'absent';
  try { await M.startup.promise; } catch (e) { return 'failed: ' + (e && e.message || e); }
  return 'ready ' + M.version;
})()"""


def load(br: Chromium, url: str, settle: float, budget: float, n_widgets: int,
         width: int, height: int) -> str:
    """Navigate and wait until the page's scripts and loads have settled; MathJax state."""
    tid = br.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
    br.session = br.call("Target.attachToTarget", {"targetId": tid, "flatten": True},
                         session=False)["sessionId"]
    for domain in ("Page", "Network", "Runtime", "Log"):
        br.call(f"{domain}.enable")
    br.call("Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    nav = br.call("Page.navigate", {"url": url})
    if nav.get("errorText"):
        raise RuntimeError(f"navigation failed: {nav['errorText']}")
    deadline = time.monotonic() + budget
    while not br.count("Page.loadEventFired") and time.monotonic() < deadline:
        br.pump(0.2)

    def settle_down() -> None:
        # Quiet for `settle` seconds (no new request, log or console event), widgets drawn.
        last, quiet_since = len(br.events), time.monotonic()
        while time.monotonic() < deadline:
            br.pump(0.25)
            if len(br.events) != last:
                last, quiet_since = len(br.events), time.monotonic()
                continue
            drawn = br.evaluate("document.querySelectorAll('.widget-subarea').length") or 0
            if time.monotonic() - quiet_since >= settle and drawn >= n_widgets:
                return

    settle_down()  # also lets a redirect (index.html) land on its target page
    mathjax = br.evaluate(MATHJAX_READY_JS, await_promise=True)
    settle_down()  # fonts load after typesetting
    return mathjax


def screenshot(br: Chromium, path: Path, width: int, height: int, max_height: int) -> None:
    metrics = br.call("Page.getLayoutMetrics")
    content = metrics.get("cssContentSize") or metrics.get("contentSize") or {}
    full = int(min(max(height, content.get("height", height)), max_height))
    br.call("Emulation.setDeviceMetricsOverride",
            {"width": width, "height": full, "deviceScaleFactor": 1, "mobile": False})
    br.pump(0.5)
    data = br.call("Page.captureScreenshot", {"format": "png", "fromSurface": True})["data"]
    path.write_bytes(base64.b64decode(data))


# --------------------------------------------------------------------------- checks


def derived(path: str | None, page: Path, several: bool) -> Path | None:
    """--screenshot/--dump-dom path for this page: as given, or with -<page> added for several."""
    if not path:
        return None
    p = Path(path)
    return p.with_name(f"{p.stem}-{page.stem}{p.suffix}") if several else p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pages", nargs="+", metavar="page",
                    help="built pages, e.g. book/_build/html/book/intro.html")
    ap.add_argument("--screenshot", metavar="PNG",
                    help="write a full-page screenshot here (with several pages: PNG stem + -<page>)")
    ap.add_argument("--dump-dom", metavar="HTML", help="write the DOM after JavaScript ran here")
    ap.add_argument("--width", type=int, default=1280, help="viewport width (default %(default)s)")
    ap.add_argument("--height", type=int, default=900, help="viewport height (default %(default)s)")
    ap.add_argument("--max-height", type=int, default=12000, help="screenshot height cap")
    ap.add_argument("--settle", type=float, default=1.5,
                    help="seconds without new activity that count as settled (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=90, help="seconds per page (default %(default)s)")
    ap.add_argument("--chromium", help="browser binary (default: chromium on PATH, or $CHROMIUM)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="list every request and console message")
    ap.add_argument("--require-math", action="store_true", help="fail if a page has no math")
    ap.add_argument("--require-images", type=int, default=0, metavar="N",
                    help="fail if a page shows fewer than N images")
    ap.add_argument("--require-widgets", type=int, default=0, metavar="N",
                    help="fail if fewer than N Jupyter widgets rendered on a page")
    args = ap.parse_args()

    binary = find_chromium(args.chromium)
    if not binary:
        print("check_offline: Chromium not found. Install it with\n"
              "    apt-get update && apt-get install -y chromium\n"
              "or pass --chromium PATH (or set CHROMIUM).", file=sys.stderr)
        return 2
    status = 0
    several = len(args.pages) > 1
    for page in args.pages:
        rc = check_page(page, args, binary, derived(args.screenshot, Path(page), several),
                        derived(args.dump_dom, Path(page), several))
        status = max(status, rc)
    if several:
        print("check_offline: " + ("all pages OK" if status == 0 else "FAILED"))
    return status


def check_page(page: str, args, binary: str, shot: Path | None, dump: Path | None) -> int:
    path = Path(page).resolve()
    if not path.is_file():
        print(f"check_offline: no such page: {page} (build the book first)", file=sys.stderr)
        return 2
    url = path.as_uri()
    failures: list[str] = []
    notes: list[str] = []

    # 1. The page as built.
    src = parse(path.read_text(encoding="utf-8", errors="replace"))
    failures += [f"built page points to the network: {r}" for r in network_refs(src)]
    failures += [f"built page names a missing file: {r}" for r in missing_local(src, url)]
    n_math = len(src.with_class("math"))
    n_views = src.inline_scripts_of_type("application/vnd.jupyter.widget-view+json")
    has_state = src.inline_scripts_of_type("application/vnd.jupyter.widget-state+json") > 0

    # 2. The page in the browser.
    br = Chromium(binary, timeout=args.timeout)
    try:
        mathjax = load(br, url, args.settle, args.timeout, n_views, args.width, args.height)
        dom_html = br.evaluate("document.documentElement.outerHTML")
        final_url = br.evaluate("document.URL") or url  # index.html redirects to the root page
        images = br.evaluate(IMAGES_JS) or []
        if shot:
            shot = shot.resolve()
            shot.parent.mkdir(parents=True, exist_ok=True)
            screenshot(br, shot, args.width, args.height, args.max_height)
    except Exception as exc:  # noqa: BLE001 - report any browser failure as a setup error
        print(f"check_offline: browser run failed on {url}: {exc}\n{br.stderr_tail()}",
              file=sys.stderr)
        br.close()
        return 2
    br.close()
    if dump:
        dump.write_text("<!DOCTYPE html>\n" + dom_html, encoding="utf-8")
    dom = parse(dom_html)
    # After a redirect (index.html) the DOM is another page: count what either one has.
    n_math = max(n_math, len(dom.with_class("math")))
    n_views = max(n_views, dom.inline_scripts_of_type("application/vnd.jupyter.widget-view+json"))
    has_state = has_state or dom.inline_scripts_of_type("application/vnd.jupyter.widget-state+json") > 0

    # Requests: every one local, every one loaded.
    requests: dict[str, str] = {}
    for e in br.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Network.requestWillBeSent":
            requests[p["requestId"]] = p["request"]["url"]
        elif m == "Network.loadingFailed" and not p.get("canceled"):
            failures.append(f"load failed ({p.get('errorText')}): "
                            f"{requests.get(p['requestId'], p['requestId'])}")
    remote = sorted({u for u in requests.values() if urlsplit(u).scheme not in LOCAL_SCHEMES})
    failures += [f"page requested the network: {u}" for u in remote]
    notes.append(f"requests: {len(requests)}, all local" if not remote
                 else f"requests: {len(requests)}, {len(remote)} to the network")
    if args.verbose:
        notes += [f"  request {u}" for u in requests.values()]

    # JavaScript errors and console.
    n_console = 0
    for e in br.events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            desc = (d.get("exception") or {}).get("description", "").split("\n")[0]
            failures.append(f"JavaScript error: {d.get('text')} {desc} at {d.get('url', '')}:"
                            f"{d.get('lineNumber')}")
        elif m == "Runtime.consoleAPICalled":
            n_console += 1
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            if args.verbose:
                notes.append(f"  console.{p.get('type')}: {text[:200]}")
            if p.get("type") in ("error", "assert") and CONSOLE_BAD.search(text):
                failures.append(f"console.{p['type']}: {text[:300]}")
        elif m == "Log.entryAdded":
            entry = p.get("entry", {})
            text = entry.get("text", "")
            if entry.get("level") == "error" and not text.startswith("Failed to load resource"):
                failures.append(f"browser log error: {text[:300]} {entry.get('url', '')}")
    notes.append(f"console: {n_console} messages")
    failures += [f"page (after JavaScript) points to the network: {r}" for r in network_refs(dom)]
    failures += [f"page (after JavaScript) names a missing file: {r}"
                 for r in missing_local(dom, final_url)]
    if final_url != url:
        notes.insert(0, f"redirected to {final_url}")

    # Math.
    n_mjx = len(dom.find("mjx-container"))
    raw = [d for d in ("\\(", "\\[", "$$") if d in " ".join(dom.text)]
    if raw:
        failures.append(f"raw TeX left in the page text: {' '.join(raw)} (MathJax did not run?)")
    if n_math or args.require_math:
        if not n_math:
            failures.append("--require-math: the page has no math")
        elif mathjax and str(mathjax).startswith("failed"):
            failures.append(f"MathJax {mathjax}")
        if n_math and n_mjx < n_math:
            failures.append(f"MathJax typeset {n_mjx} of {n_math} math elements (MathJax: {mathjax})")
        if dom.find("mjx-merror"):
            failures.append("MathJax reports a TeX error (mjx-merror)")
        notes.append(f"math: {n_math} elements, {n_mjx} typeset (MathJax {mathjax})")
    else:
        notes.append("math: none on this page")

    # Images.
    broken = [i["src"] for i in images if not i.get("complete") or not i.get("w")]
    failures += [f"image not shown: {s[:200]}" for s in broken]
    if len(images) < args.require_images:
        failures.append(f"--require-images {args.require_images}: the page has {len(images)}")
    notes.append(f"images: {len(images)} ({len(images) - len(broken)} decoded)"
                 + "".join(f"\n    {i['w']}x{i['h']} {i['src'].rsplit('/', 1)[-1][:60]}"
                           for i in images))

    # Widgets.
    if n_views or args.require_widgets:
        drawn = len(dom.with_class("widget-subarea"))
        controls = len(dom.with_class("jupyter-widgets"))
        if n_views and not has_state:
            failures.append("widget views but no saved widget state in the notebook metadata")
        if drawn < max(n_views, args.require_widgets) or not controls:
            failures.append(f"widgets: {n_views} in the page, {drawn} rendered")
        notes.append(f"widgets: {n_views} in the page, {drawn} rendered")
    else:
        notes.append("widgets: none on this page")
    if shot:
        notes.append(f"screenshot: {shot}")

    print(f"check_offline: {page}")
    for n in notes:
        print(f"  {n}")
    if failures:
        for f in dict.fromkeys(failures):
            print(f"FAIL {f}")
        print(f"check_offline: {len(dict.fromkeys(failures))} problem(s) on {page}")
        return 1
    print("check_offline: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
