"""Start JupyterLab from this venv on 127.0.0.1 (a free port, a token) for a test, and stop it.

Its configuration, runtime, settings and workspace directories live under the test's own
directory, so a test neither reads nor changes the user's, and nothing is fetched (no news feed,
no update check): the widget JavaScript is the installed ``jupyterlab_widgets`` extension's.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import kit

JUPYTER = Path(sys.executable).parent / "jupyter"
_CONFIG = """\
c.LabApp.news_url = None
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.ServerApp.open_browser = False
"""


@dataclass
class Lab:
    port: int
    token: str
    root: Path
    runtime_dir: Path
    log: Path
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, notebook: str) -> str:
        """The address of ``notebook`` (relative to the root) in JupyterLab, token included."""
        return f"{self.url}/lab/tree/{notebook}?token={self.token}"

    def api(self, path: str):
        """GET the server's REST API straight (never through a proxy) and decode its JSON."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(f"{self.url}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with opener.open(req, timeout=5) as resp:
            return json.load(resp)

    def kernel_state(self, notebook: str) -> str | None:
        """The execution state (``starting``, ``idle``, ``busy``) of ``notebook``'s kernel, None before it has one."""
        for s in self.api("sessions"):
            if s.get("path") == notebook and s.get("kernel"):
                return s["kernel"].get("execution_state")
        return None

    def connection_file(self, notebook: str) -> Path:
        """The kernel connection file of the session running ``notebook``."""
        for s in self.api("sessions"):
            if s.get("path") == notebook and s.get("kernel"):
                return self.runtime_dir / f"kernel-{s['kernel']['id']}.json"
        raise LookupError(f"no kernel session for {notebook}: {self.api('sessions')}")


@contextmanager
def jupyterlab(root: Path, timeout: float = 60):
    """A JupyterLab serving ``root``; stopped (with its kernels) on exit, even on failure."""
    state = root / ".jupyter-test"
    dirs = {k: state / k for k in ("config", "runtime", "settings", "workspaces")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["config"] / "jupyter_server_config.py").write_text(_CONFIG)
    news = dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))  # no toast asking
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
               JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]), JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
               JUPYTER_PLATFORM_DIRS="1")
    port, token = kit.free_port(), secrets.token_hex(16)
    argv = [str(JUPYTER), "lab", "--ip", "127.0.0.1", "--port", str(port), "--no-browser",
            f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = state / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    lab = Lab(port, token, root, dirs["runtime"], log, proc)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                return "started" in lab.api("status")
            except OSError:
                return False

        kit.wait_until(up, timeout, interval=0.2, what="JupyterLab to answer")
        yield lab
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server shuts its kernels down), then SIGKILL the whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # kernels left behind, if any
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(5)
