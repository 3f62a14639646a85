"""Read the built book in headless Chromium, page by page, and fail on what a reader would see wrong.

Usage: ``python .ci/check_book.py [_build/html]`` (``make check-book``).

The HTML folder is served on 127.0.0.1; every request to any other host is blocked, so the check also
proves the book renders with no network. Every page is opened in the system Chromium (never a
downloaded browser) and fails the check on:

* a formula left untypeset (raw TeX in the rendered text, or a MathJax error);
* an image that does not load;
* an internal link whose page or ``#anchor`` does not exist;
* a console error, an uncaught page error, or a request that fails or leaves 127.0.0.1;
* output noise in executed cells: tracebacks, warnings, stderr streams, object reprs (``at 0x…``).

Screenshots of three pages go to ``_build/check/``; the summary counts the formulas, figures and links
seen.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import sys
import threading
import urllib.parse
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
# Folders of the build that hold assets, not pages.
ASSET_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "jupyter_execute", "check"}
# Pages whose screenshots are saved (the first three that exist), chosen to show prose, maths and figures.
SCREENSHOT_PAGES = ["book/intro.html", "book/maths.html", "notebooks/03_redundancy.html",
                    "notebooks/01_ntk_and_jacobians.html"]
MATHJAX_TIMEOUT_MS = 60_000

# TeX that MathJax should have typeset; searched in the rendered text with code, pre and maths removed.
RAW_TEX = re.compile(
    r"\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\\end\{|"
    r"\\(?:frac|sum|mathbb|mathcal|mathrm|operatorname|lambda|alpha|beta|theta|sigma|varepsilon|"
    r"top|le|ge|leq|geq|tilde|hat|bar|sqrt|cdot|in|times|Pi|Sigma|Theta|left|right|text)(?![A-Za-z])"
    r"|\$[^$\s][^$\n]{0,200}?\$"
)
REDIRECT = re.compile(r'<meta http-equiv="refresh" content="\d+;\s*url=([^"]+)"', re.I)
# Noise in executed outputs.
NOISE = re.compile(
    r"Traceback \(most recent call last\)|\b\w*Warning: |\bat 0x[0-9a-fA-F]+|"
    r"<(?:torch|numpy|matplotlib)[\w.]* object|<torch\._C\.Generator"
)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the server's access log is noise here
        pass


class _Anchors(HTMLParser):
    """Collect the ids and names an HTML page defines (link targets)."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key == "id" or (tag == "a" and key == "name"):
                self.ids.add(value or "")


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def _pages(root: Path) -> list[Path]:
    pages = []
    for p in sorted(root.rglob("*.html")):
        rel = p.relative_to(root)
        if rel.parts[0] in ASSET_DIRS or rel.name in {"genindex.html", "search.html"}:
            continue
        pages.append(p)
    return pages


def _serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# Runs in the page: wait for MathJax, then report what the reader sees.
_READER_VIEW_JS = """
async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  const main = document.querySelector('main') || document.body;
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .highlight, .cell_input,'
                         + ' .cell_output, .headerlink, .toggle-details').forEach(e => e.remove());
  const outputs = Array.from(main.querySelectorAll('.cell_output, .output')).map(e => e.innerText);
  const stderr = main.querySelectorAll('.output.stderr, .stderr').length;
  const imgs = Array.from(document.querySelectorAll('main img')).map(i => ({
    src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, alt: i.getAttribute('alt') || ''}));
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'));
  return {
    text: clone.innerText,
    outputs: outputs,
    stderr: stderr,
    formulas: main.querySelectorAll('mjx-container').length,
    mathErrors: main.querySelectorAll('mjx-merror, [data-mjx-error]').length,
    figures: main.querySelectorAll('figure').length,
    captioned: main.querySelectorAll('figure figcaption').length,
    imgs: imgs,
    links: links,
  };
}
"""


def check(root: Path, out: Path) -> int:
    from playwright.sync_api import sync_playwright

    root = root.resolve()
    if not (root / "index.html").exists():
        print(f"check-book: no built book at {root} (run `make book` first)")
        return 2
    pages = _pages(root)
    server, base = _serve(root)
    problems: dict[str, list[str]] = defaultdict(list)
    counts = defaultdict(int)
    out.mkdir(parents=True, exist_ok=True)
    shots = [p for p in SCREENSHOT_PAGES if (root / p).exists()][:3]
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")

            def route(r):  # nothing leaves 127.0.0.1
                host = urllib.parse.urlsplit(r.request.url).hostname
                if r.request.url.startswith(("data:", "blob:")) or host == "127.0.0.1":
                    return r.continue_()
                current = getattr(route, "page", "?")
                problems[current].append(f"tried to load an external resource: {r.request.url}")
                return r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.on("console", lambda m: m.type == "error"
                    and problems[route.page].append(f"console error: {m.text}"))
            page.on("pageerror", lambda e: problems[route.page].append(f"page error: {e}"))
            page.on("requestfailed", lambda r: r.url.startswith(base)
                    and problems[route.page].append(f"failed to load {r.url[len(base):]}: {r.failure}"))
            for path in pages:
                rel = path.relative_to(root).as_posix()
                route.page = rel
                redirect = REDIRECT.search(path.read_text(encoding="utf-8", errors="replace"))
                if redirect:  # a redirect stub (the root index.html): only its target must exist
                    _check_links(root, path, [redirect.group(1)], problems[rel], counts)
                    continue
                page.goto(base + rel, wait_until="load")
                page.set_default_timeout(MATHJAX_TIMEOUT_MS)
                seen = page.evaluate(_READER_VIEW_JS)
                counts["pages"] += 1
                counts["formulas"] += seen["formulas"]
                counts["figures"] += seen["figures"]
                counts["figure captions"] += seen["captioned"]
                counts["images"] += len(seen["imgs"])
                if seen["mathErrors"]:
                    problems[rel].append(f"{seen['mathErrors']} formula(s) with MathJax errors")
                for m in list(RAW_TEX.finditer(seen["text"]))[:5]:
                    ctx = seen["text"][max(0, m.start() - 40): m.end() + 40].replace("\n", " ")
                    problems[rel].append(f"raw TeX in the rendered text: …{ctx}…")
                for img in seen["imgs"]:
                    if not img["ok"]:
                        problems[rel].append(f"image does not load: {img['src']}")
                    if not img["alt"].strip() or img["alt"] == img["src"]:
                        counts["images without alt text"] += 1
                if seen["stderr"]:
                    problems[rel].append(f"{seen['stderr']} stderr output(s) in executed cells")
                for text in seen["outputs"]:
                    for m in list(NOISE.finditer(text))[:3]:
                        ctx = text[max(0, m.start() - 40): m.end() + 40].replace("\n", " ")
                        problems[rel].append(f"output noise: …{ctx}…")
                _check_links(root, path, seen["links"], problems[rel], counts)
                if rel in shots:
                    name = rel.replace("/", "_").removesuffix(".html") + ".png"
                    page.screenshot(path=str(out / name), full_page=True)
            browser.close()
    finally:
        server.shutdown()

    bad = {k: list(dict.fromkeys(v)) for k, v in problems.items() if v}
    print(f"check-book: {counts['pages']} pages, {counts['formulas']} formulas typeset, "
          f"{counts['figures']} figures ({counts['figure captions']} with captions), "
          f"{counts['images']} images ({counts['images without alt text']} without alt text), "
          f"{counts['internal links']} internal links ({counts['anchored links']} to anchors), "
          f"{counts['external links']} external links")
    print(f"check-book: screenshots of {', '.join(shots)} in {out}")
    if bad:
        n = sum(len(v) for v in bad.values())
        print(f"check-book: FAILED, {n} problem(s) on {len(bad)} page(s):")
        for rel, items in sorted(bad.items()):
            print(f"  {rel}")
            for item in items[:25]:
                print(f"    - {item}")
            if len(items) > 25:
                print(f"    … and {len(items) - 25} more")
        return 1
    print("check-book: OK")
    return 0


def _check_links(root: Path, page: Path, hrefs: list[str], problems: list[str], counts) -> None:
    for href in hrefs:
        parts = urllib.parse.urlsplit(href)
        if parts.scheme in ("http", "https", "mailto") or parts.netloc:
            counts["external links"] += 1
            continue
        if parts.scheme or href.startswith("javascript:"):
            continue
        counts["internal links"] += 1
        target = page if not parts.path else (page.parent / urllib.parse.unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_relative_to(root) or not target.exists():
            problems.append(f"broken link: {href}")
            continue
        if parts.fragment and target.suffix == ".html":
            counts["anchored links"] += 1
            if urllib.parse.unquote(parts.fragment) not in _anchors(target):
                problems.append(f"link to a missing anchor: {href}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", nargs="?", default="_build/html", type=Path, help="the built HTML folder")
    ap.add_argument("--out", type=Path, default=None, help="screenshot folder (default: <html>/../check)")
    args = ap.parse_args(argv)
    return check(args.html, args.out or args.html.resolve().parent / "check")


if __name__ == "__main__":
    sys.exit(main())
