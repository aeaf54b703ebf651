"""The documentation site builds strictly and says what the code says (issue 26).

One strict ``mkdocs build`` (as ``make docs`` runs it) into a temporary folder; then the built pages
are read: the metrics reference lists every key of kit.bench.METRICS with its definition, the API
reference documents the session, the handle, every call of kit.api and every error, the layer
pictures name every module of pyproject.toml's contracts, every notebook has a page, and every link
of the README reaches a page of the site. A browser test (Debian's Chromium) opens the built site
over HTTP on 127.0.0.1 and searches it. The Python blocks of the pages run in tests/test_readme.py.
"""

from __future__ import annotations

import html
import inspect
import os
import re
import subprocess
import sys
import threading
import tomllib
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import kit
from kit import api, errors
from kit.bench.metrics import METRICS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SCREENSHOT = ROOT / "reports" / "browser" / "docs-search.png"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--quiet", "-d", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return out


def page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text()


def text_of(markup: str) -> str:
    """The page's words, tags removed and entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", markup)).split())


def test_metrics_reference_lists_every_metric_as_the_code_defines_it(site):
    markup = page(site, "reference/metrics")
    words = text_of(markup)
    anchors = re.findall(r'<h3 id="([^"]+)"', markup)
    assert anchors == list(METRICS)  # one linkable section per metric, in the code's order
    for name, (unit, definition) in METRICS.items():
        assert f'href="#{name}"' in markup, name  # the index table links to it
        assert " ".join(definition.split()) in words, name
    assert "not included in pss" in METRICS["monitor_pss"][1]  # the choice about monitors is stated


def test_api_reference_documents_the_session_the_handle_every_call_and_error(site):
    markup = page(site, "reference/api")
    ids = set(re.findall(r'id="([\w.]+)"', markup))
    wanted = {"kit.Session", "kit.Instance", "kit.RunResult", "kit.bench.Study", "kit.net.wait_until"}
    wanted |= {f"kit.api.{n}" for n, f in vars(api).items()
               if inspect.isfunction(f) and f.__module__ == api.__name__ and not n.startswith("_")}
    wanted |= {f"kit.errors.{n}" for n, c in vars(errors).items()
               if inspect.isclass(c) and issubclass(c, errors.KitError) and c.__module__ == errors.__name__}
    assert len(wanted) > 30
    assert not wanted - ids, sorted(wanted - ids)
    assert "kit.Session.run" in ids and "kit.Instance.exec" in ids  # methods too, not only the classes
    assert not re.search(r":(class|func|meth|mod|data|attr):", text_of(markup))  # docstrings' roles not shown raw


def test_design_draws_every_contract_and_module(site):
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    markup = page(site, "design")
    assert markup.count('<svg class="kit-layers"') == sum(len(c.get("containers", [None])) for c in contracts)
    words = text_of(markup)
    for c in contracts:
        modules = c.get("modules", []) + [m.strip() for layer in c.get("layers", []) for m in layer.split("|")]
        for m in modules:
            name = m if not c.get("containers") else f"{c['containers'][0]}.{m}"
            assert name in words, (c["id"], name)


def test_pages_load_nothing_from_the_network(site):
    """Fonts, scripts and pictures are the site's own: it reads offline, and reaches no address."""
    for built in site.rglob("*.html"):
        markup = built.read_text()
        remote = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]+)"', markup)
        assert not remote, (built.relative_to(site), remote)


def test_every_notebook_has_a_page_from_its_newest_run_or_says_it_was_not_run(site):
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 8
    index = text_of(page(site, "notebooks"))
    for name in notebooks:
        assert (site / "notebooks" / name / "index.html").exists(), name
        assert f'href="notebooks/{name}/"' in page(site, ""), name  # in the nav
        executed = sorted((ROOT / "reports").glob(f"*/{name}.ipynb"))
        executed += [p for p in [ROOT / "notebooks" / "executed" / f"{name}.ipynb"] if p.exists()]  # committed run
        if executed:  # its page shows the run's outputs, and the index names the run
            assert "jp-OutputArea-output" in page(site, f"notebooks/{name}"), name
            assert f"{name}.ipynb (a kit report run" in index, name
        else:
            assert f"{name} the committed notebook, not executed here" in index, name


def test_readme_is_short_and_its_links_reach_the_site(site):
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    targets = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", text)
    docs = [(t, a) for t, a in targets if t.startswith("docs/")]
    assert len(docs) >= 15
    for target, anchor in targets:
        if target.startswith(("http://", "https://")):
            continue
        assert (ROOT / target).exists(), target
        if target.startswith("docs/") and target.endswith(".md"):
            rel = target.removeprefix("docs/").removesuffix(".md")
            rel = rel.removesuffix("index") if rel.endswith("index") else rel
            built = site / rel / "index.html"
            assert built.exists(), target
            if anchor:
                assert f'id="{anchor}"' in built.read_text(), f"{target}#{anchor}"
    # setup, the first notebook and the metrics: one click from the README, the second is on the page
    for needed in ("docs/getting-started.md", "docs/reference/metrics.md", "docs/notebooks/index.md"):
        assert needed in text, needed


def test_the_layer_picture_refuses_a_contract_it_cannot_draw(tmp_path):
    sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
    try:
        import kit_docs
    finally:
        sys.path.remove(str(ROOT / "docs" / "_hooks"))
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[[tool.importlinter.contracts]]\nid = "x"\nname = "x"\ntype = "forbidden"\n')
    with pytest.raises(ValueError, match="cannot draw"):
        kit_docs.layers_markdown(bad)


@pytest.fixture
def served(site):
    """The built site over HTTP on 127.0.0.1 (search needs HTTP, not file://)."""
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # one line per request would bury a failure's output
            pass

    handler = partial(Quiet, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", kit.free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_site_in_a_browser(served):
    """Debian's Chromium opens the home page, the metrics reference and a rendered notebook, and the
    search box finds 'snapshot'; the screenshot of the results stays in reports/browser/."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--no-proxy-server"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(served + "/")
        assert "Isolation Kit" in driver.title
        driver.get(served + "/reference/metrics/")
        assert driver.find_element(By.ID, "launch_to_exit").is_displayed()
        driver.get(served + "/notebooks/01-quickstart/")
        kit.wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), timeout=30,
                       what="the notebook's cells")
        driver.get(served + "/")
        box = driver.find_element(By.CSS_SELECTOR, "input.md-search__input")  # in the header at this width
        kit.wait_until(lambda: box.is_displayed() and box.is_enabled(), timeout=30, what="the search box")
        box.click()
        box.send_keys("snapshot")
        results = lambda: driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item")  # noqa: E731
        kit.wait_until(results, timeout=60, what="search results for 'snapshot'")
        assert any("snapshot" in r.text.lower() for r in results())
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()
    assert SCREENSHOT.stat().st_size > 10_000
