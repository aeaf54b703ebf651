"""kit.widgets.instances() in a real browser: JupyterLab from this venv, Debian's Chromium driven by
Selenium through Debian's chromedriver (never Selenium Manager, which would try to download one).

The test writes a notebook that starts a detached runc container and shows the live table, runs it
in JupyterLab, clicks that row's stop button, and asks the kernel itself (jupyter_client) whether the
instance stopped. The screenshot goes to reports/browser/.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

import kit

from tests.conftest import need, unique
from tests.lab_server import jupyterlab

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parent.parent / "reports" / "browser" / "widgets-instances.png"
NOTEBOOK = "widgets.ipynb"
#: Stops at once on SIGTERM (a plain `sleep` as PID 1 would ignore it until the stop timeout).
CLEANUP = "import kit\nif 'live' in globals(): live.close()\nkit.prune()"
SERVICE = ["sh", "-c", "trap 'exit 0' TERM; echo up; while true; do sleep 1; done"]


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900", "--no-proxy-server"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _kernel_says(connection_file: Path, code: str, timeout: float = 60) -> str:
    """Run ``code`` in the notebook's own kernel; what it printed."""
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(connection_file))
    kc.load_connection_file()
    kc.start_channels()
    out: list[str] = []
    try:
        kc.wait_for_ready(timeout=timeout)

        def hook(msg):
            c = msg["content"]
            if msg["msg_type"] == "stream":
                out.append(c["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(c["traceback"]))

        reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
        assert reply["content"]["status"] == "ok", "".join(out)
    finally:
        kc.stop_channels()
    return "".join(out)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_stop_button_in_jupyterlab(tmp_path):
    need("runc")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    name = unique("browser")  # letters, digits and '-': its row's CSS class is kit-row-<name>
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        f"import kit\nkit.start('busybox', {SERVICE!r}, runtime='runc', name={name!r}, "
        f"ports=['{kit.free_port()}:80'])\n"
        "live = kit.widgets.instances(interval=1)\nlive")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, tmp_path / NOTEBOOK)

    with jupyterlab(tmp_path) as lab:
        driver = _browser()
        connection = None
        try:
            wait = WebDriverWait(driver, 60)
            driver.get(lab.page(NOTEBOOK))
            editor = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .cm-content")))
            kit.wait_until(lambda: lab.kernel_state(NOTEBOOK) == "idle", 60, what="the notebook's kernel to be ready")
            editor.click()
            editor.send_keys(Keys.SHIFT, Keys.ENTER)  # run the cell
            row = f".kit-row-{name}"
            stop = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"{row} .kit-stop")))
            connection = lab.connection_file(NOTEBOOK)
            state = driver.find_element(By.CSS_SELECTOR, f"{row} .widget-html:nth-child(4)")
            assert state.text == "running"
            stop.click()
            # the row says so in the page (the widget refreshed itself), and the kernel says so
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"{row} .widget-html:nth-child(4)").text
                       .startswith("exited"))
            said = _kernel_says(connection, (
                f"kit.wait_until(lambda: kit.ps().set_index('name').loc[{name!r}, 'status'] != 'running', 30)\n"
                f"print(kit.ps().set_index('name').loc[{name!r}, 'status']); print(live.errors)"))
            assert said.split("\n")[:2] == ["exited (0)", "[]"], said
            assert f"stopped {name} (exit 0)" in driver.find_element(By.CSS_SELECTOR, ".kit-instances").text
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(SCREENSHOT))
            print(f"screenshot: {SCREENSHOT}")
        except BaseException:
            driver.save_screenshot(str(tmp_path / "failed.png"))
            print(f"screenshot of the failure: {tmp_path / 'failed.png'}; JupyterLab's log: {lab.log}")
            raise
        finally:
            driver.quit()
            try:  # remove the instance through its own kernel, even on failure (else: its atexit)
                _kernel_says(connection or lab.connection_file(NOTEBOOK), CLEANUP)
            except LookupError:
                pass  # no kernel was started
