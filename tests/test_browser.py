"""The rendered book as a reader gets it: every page opened in a real browser.

The book is built into ``_build/html`` when that is missing or older than its
sources, served on 127.0.0.1, and every page of the table of contents (plus
the index, the module index and the search page) is opened in Chromium, with
every request that leaves the machine refused and recorded. On each page:

- the equations are typeset by MathJax (served from the book itself), with
  no TeX error and no raw TeX (``$$``, ``\\frac``, ...) left in the text;
- every image has loaded;
- every internal link points to a file of the book, and its anchor exists;
- the console shows no error, no request fails or leaves 127.0.0.1.

A screenshot of each page goes to ``_build/screenshots/``.

Needs Playwright (Python) and a Chromium: Debian's ``chromium`` package, or
the one named by the environment variable ``CHROMIUM``. Without them the
test is skipped, except under ``CI=true``, where it fails.
"""
import functools
import html.parser
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
HTML = BUILD / "html"
SCREENSHOTS = BUILD / "screenshots"
STAMP = HTML / ".browser-test-build"

# Everything the rendered pages are made from: a newer file means a rebuild.
SOURCES = ["_config.yml", "_toc.yml", "references.bib", "*.md", "chapters/*.ipynb", "book/*.py", "_ext/*.py"]

LOOPBACK = {"127.0.0.1"}
CHROMIUM_ARGS = [
    "--no-sandbox",  # Chromium refuses to run as root otherwise (containers, CI).
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
]

# TeX that escaped typesetting: $$, \( \) \[ \], a control word, or $x$ in prose.
RAW_TEX = re.compile(r"\$\$|\\[()\[\]]|\\[A-Za-z]{2,}|(?<![\w$])\$[^\s$][^$\n]{0,80}?(?<!\s)\$(?![\w$])")


# ---------------------------------------------------------------- the pages


def toc_pages():
    """Docnames of the table of contents, in reading order (root first)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    pages = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.append(re.sub(r"\.(md|ipynb|rst)$", "", entry["file"]))
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key))

    walk([{key: toc[key]} for key in ("parts", "chapters", "sections") if key in toc])
    return pages


PAGES = toc_pages()
EXTRA_PAGES = ["genindex", "search"] + (["py-modindex"] if "api" in PAGES else [])


# --------------------------------------------------------- build and serve


def _newest(paths):
    return max((p.stat().st_mtime for p in paths if p.is_file()), default=0.0)


def _sources():
    return [p for pattern in SOURCES for p in ROOT.glob(pattern)]


def _jupyter_book():
    beside_python = Path(sys.executable).parent / "jupyter-book"
    return str(beside_python) if beside_python.exists() else shutil.which("jupyter-book")


@pytest.fixture(scope="module")
def site():
    """_build/html, built first when missing or older than a source."""
    built = max(_newest([STAMP]), _newest(HTML.glob("**/*.html")))
    if not (HTML / f"{PAGES[0]}.html").exists() or _newest(_sources()) > built:
        command = _jupyter_book()
        assert command, "jupyter-book is not installed"
        result = subprocess.run([command, "build", str(ROOT)], cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"jupyter-book build failed:\n{(result.stdout + result.stderr)[-3000:]}")
        STAMP.write_text(time.ctime())
    return HTML


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _chromium():
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def _unavailable(reason):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser test must run)")
    pytest.skip(reason)


class Browser:
    """One Chromium for the module; each page gets a fresh page with its own records."""

    def __init__(self, playwright, executable):
        self.browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        self.context = self.browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        self.offhost = []  # every request refused for leaving the machine
        self.context.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            self.offhost.append(url)
            route.abort("blockedbyclient")

    def close(self):
        self.context.close()
        self.browser.close()


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the browser test needs the playwright package (pip install -r requirements.txt)")
    executable = _chromium()
    if executable is None:
        _unavailable("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chromium)")
    with sync_playwright() as playwright:
        session = Browser(playwright, executable)
        yield session
        session.close()


# ---------------------------------------------------------- page checks


class _Ids(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)


@functools.lru_cache(maxsize=None)
def anchors_of(path):
    parser = _Ids()
    parser.feed(Path(path).read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


def local_file(url, base):
    """The file of _build/html that a URL of our server names, or None for another host."""
    parts = urlsplit(url)
    if f"{parts.scheme}://{parts.netloc}" != base:
        return None
    path = unquote(parts.path).lstrip("/")
    target = HTML / path
    return target / "index.html" if path == "" or path.endswith("/") else target


TYPESET_JS = r"""async () => {
    const math = [...document.querySelectorAll('.math')];
    if (!math.length) return {math: 0};
    if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return {math: math.length, loaded: false};
    await Promise.race([MathJax.startup.promise, new Promise(resolve => setTimeout(resolve, 15000))]);
    return {
        math: math.length,
        loaded: true,
        untypeset: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
        // A TeX error, or a macro MathJax does not know (shown in red as \name): both are in the MathML.
        errors: Array.from(MathJax.startup.document.math).map(m => MathJax.startup.toMML(m.root))
            .filter(mml => /<merror|<mtext[^>]*>[^<]*\\[A-Za-z]/.test(mml))
            .map(mml => mml.replace(/\s+/g, ' ').slice(0, 200)),
    };
}"""

# Prose as a reader sees it: text outside code, scripts and typeset math.
TEXT_JS = r"""() => {
    const skip = 'script, style, pre, code, textarea, kbd, samp, mjx-container, .highlight, .linenodiv';
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const parts = [];
    while (walker.nextNode()) {
        const node = walker.currentNode;
        if (!node.parentElement.closest(skip)) parts.push(node.textContent);
    }
    return parts.join(' ');
}"""

IMAGES_JS = r"""async () => {
    const images = [...document.images];
    images.forEach(img => { img.loading = 'eager'; });
    await Promise.all(images.map(img => img.complete ? null : new Promise(resolve => {
        img.addEventListener('load', resolve); img.addEventListener('error', resolve);
        setTimeout(resolve, 10000);
    })));
    return images.map(img => ({src: img.getAttribute('src'), ok: img.complete && img.naturalWidth > 0}));
}"""

LINKS_JS = "() => [...document.querySelectorAll('a[href]')].map(a => [a.getAttribute('href'), a.href])"


def check_page(browser, base, name):
    """Open one page; return (list of problems, screenshot path)."""
    problems = []
    page = browser.context.new_page()
    page.on("console", lambda msg: msg.type == "error" and problems.append(f"console error: {msg.text}"))
    page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url} ({request.failure})"))
    page.on("response", lambda response: response.status >= 400 and problems.append(
        f"HTTP {response.status}: {response.url}"))
    offhost_before = len(browser.offhost)
    url = f"{base}/{name}.html"
    try:
        response = page.goto(url, wait_until="load")
        if response is None or not response.ok:
            problems.append(f"cannot open {url}")
            return problems, None

        math = page.evaluate(TYPESET_JS)
        if math["math"] and not math["loaded"]:
            problems.append(f"{math['math']} math element(s) but MathJax is not loaded")
        elif math["math"]:
            problems += [f"math not typeset: {text!r}" for text in math["untypeset"]]
            problems += [f"TeX error in an equation: {text!r}" for text in math["errors"]]
        for raw in sorted(set(RAW_TEX.findall(page.evaluate(TEXT_JS)))):
            problems.append(f"raw TeX in the page text: {raw!r}")

        for image in page.evaluate(IMAGES_JS):
            if not image["ok"]:
                problems.append(f"image did not load: {image['src']}")

        here = local_file(page.url, base)
        for raw, absolute in page.evaluate(LINKS_JS):
            if not absolute.startswith(("http:", "https:")):
                continue  # mailto:, javascript:, ...
            target = local_file(absolute, base)
            if target is None:
                continue  # an external link: not followed, and not needed to read the page
            if not target.is_file():
                problems.append(f"broken link {raw!r}: no {target.relative_to(HTML)}")
                continue
            fragment = unquote(urlsplit(absolute).fragment)
            if not fragment:
                continue
            if target == here:
                found = page.evaluate("id => !!(document.getElementById(id) || document.getElementsByName(id).length)",
                                      fragment)
            else:
                found = target.suffix == ".html" and fragment in anchors_of(str(target))
            if not found:
                problems.append(f"broken anchor {raw!r}: no #{fragment} in {target.relative_to(HTML)}")

        page.evaluate("document.fonts.ready.then(() => true)")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shot = SCREENSHOTS / f"{name.replace('/', '__')}.png"
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    problems += [f"request to another host refused: {u}" for u in browser.offhost[offhost_before:]]
    return problems, shot


# ------------------------------------------------------------------ tests


def test_toc_puts_the_chapters_before_the_reference_pages():
    """The sidebar and the previous/next buttons read the chapters first, then api and bibliography."""
    kinds = [name.startswith("chapters/") for name in PAGES[1:]]
    assert kinds == sorted(kinds, reverse=True), f"_toc.yml: a chapter comes after a reference page: {PAGES[1:]}"


def test_every_toc_page_was_built(site):
    missing = [name for name in PAGES if not (site / f"{name}.html").is_file()]
    assert not missing, f"pages of _toc.yml without HTML: {missing}"


class _Assets(html.parser.HTMLParser):
    """(tag, URL) of everything a page loads by itself: scripts, styles, icons, images, frames, media."""

    NOT_LOADED = {"canonical", "alternate", "author", "help", "license", "next", "prev", "search", "index"}

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and not set((attrs.get("rel") or "").lower().split()) & self.NOT_LOADED:
            self.urls.append((tag, attrs.get("href")))
        elif tag in ("script", "img", "iframe", "source", "video", "audio", "embed", "track"):
            self.urls.append((tag, attrs.get("src")))
        elif tag == "object":
            self.urls.append((tag, attrs.get("data")))


def _offhost(url):
    return bool(url) and re.match(r"^([a-z][a-z0-9+.-]*:)?//", url.strip(), re.I) and urlsplit(url.strip()).hostname not in LOOPBACK


def test_no_page_loads_anything_from_another_host(site):
    """Scripts, styles, fonts and images come from the book itself, never a CDN."""
    offenders = []
    for path in sorted(site.glob("**/*.html")):
        if "_static" in path.parts:
            continue
        parser = _Assets()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        offenders += [f"{path.relative_to(site)}: <{tag}> {url}" for tag, url in parser.urls if _offhost(url)]
    for path in sorted(site.glob("_static/**/*.css")):
        for url in re.findall(r"""(?:url\(|@import\s+)["']?((?:https?:)?//[^"')\s]+)""", path.read_text(errors="replace")):
            offenders.append(f"{path.relative_to(site)}: {url}")
    assert not offenders, "assets from another host:\n" + "\n".join(offenders)


def test_intro_links_every_chapter(site):
    """The map of the book on the landing page reaches every chapter of the table of contents."""
    intro = (site / f"{PAGES[0]}.html").read_text(encoding="utf-8")
    # The page's own text, not the navigation bar (which lists every chapter anyway).
    intro = intro[intro.find("<article"):intro.rfind("</article>")]
    linked = {unquote(href).split("#")[0] for href in re.findall(r'<a [^>]*href="([^"]+)"', intro)}
    missing = [name for name in PAGES if name.startswith("chapters/") and f"{name}.html" not in linked]
    assert not missing, f"{PAGES[0]}.html does not link to {missing}"


@pytest.mark.parametrize("name", PAGES + EXTRA_PAGES)
def test_page_renders(browser, server, name):
    problems, shot = check_page(browser, server, name)
    assert not problems, f"{name}.html ({shot}):\n" + "\n".join(f"- {p}" for p in problems)


def test_search_finds_the_book(browser, server):
    page = browser.context.new_page()
    try:
        page.goto(f"{server}/search.html?q=attention", wait_until="load")
        page.wait_for_selector("#search-results ul.search li", timeout=20000)
        assert page.locator("#search-results ul.search li").count() > 0
    finally:
        page.close()


def test_plain_docstrings_become_the_restructuredtext_they_mean():
    """The API page's docstring rewriting (_ext/book_api.py): shape lines, hanging indents, products."""
    import io

    from docutils.core import publish_doctree

    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        from book_api import plain_docstring
    finally:
        sys.path.remove(str(ROOT / "_ext"))
    text = [
        "Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.",
        "",
        "query: (..., T_q, d_k)",
        "key:   (..., T_k, d_k)",
        "dropout: optional module applied to the weights",
        "         (the returned weights are the ones before dropout).",
        "A query with no allowed key gets zero weights.",
        "",
        "q_proj: D -> h*d_k, and ``h*d_k`` stays literal.",
        "",
        "Example::",
        "",
        "    x: 2*y",
        "    z: 3",
    ]
    assert plain_docstring(text) == [
        "Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V.",
        "",
        "| query: (..., T_q, d_k)",
        "| key:   (..., T_k, d_k)",
        "| dropout: optional module applied to the weights (the returned weights are the ones before dropout).",
        "",
        "A query with no allowed key gets zero weights.",
        "",
        r"q_proj: D -> h\*d_k, and ``h*d_k`` stays literal.",
        "",
        "Example::",
        "",
        "    x: 2*y",
        "    z: 3",
    ]
    warnings = io.StringIO()
    publish_doctree("\n".join(plain_docstring(text)), settings_overrides={"warning_stream": warnings})
    assert warnings.getvalue() == ""
