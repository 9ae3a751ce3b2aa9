"""A JupyterLab server and a headless Chromium page on it, for the browser tier.

The server runs on 127.0.0.1 on a free port with a token, with its own config, data,
runtime, settings and workspace folders (nothing of the user's Jupyter setup is read
or written) and autosave off; it serves a temporary copy of ``notebooks/``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "browser-screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

# User settings of the isolated JupyterLab: no autosave, no news or update checks, every
# cell kept in the page (so a locator finds the dashboard after the notebook scrolled).
SETTINGS: dict[str, dict[str, Any]] = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false",
                                                     "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}


def chromium_path() -> str | None:
    found = os.environ.get("JOBKIT_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    return found if found and os.access(found, os.X_OK) else None


def unavailable() -> str | None:
    """Why the browser tier cannot run here, or None when it can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install -e '.[browser]' (make test-browser does)"
    if shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)) is None:
        return "jupyterlab is not installed: pip install -e '.[browser]' (make test-browser does)"
    if chromium_path() is None:
        return ("no Chromium found: install Debian's package (apt-get install -y chromium) or "
                "set JOBKIT_CHROMIUM to a Chromium binary")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path

    def notebook_url(self, name: str) -> str:
        # A workspace per notebook, reset: no tab of an earlier notebook is restored.
        stem = Path(name).stem
        return f"{self.url}/lab/workspaces/{stem}/tree/{name}?reset&token={self.token}"


@contextmanager
def jupyterlab(tmp: Path, notebooks: list[Path]) -> Iterator[Lab]:
    root = tmp / "notebooks"
    root.mkdir()
    for nb in notebooks:
        shutil.copy(nb, root / nb.name)
    dirs = {name: tmp / name for name in ("config", "data", "runtime", "settings",
                                          "workspaces", "ipython")}
    for d in dirs.values():
        d.mkdir()
    for plugin, values in SETTINGS.items():
        path = dirs["settings"] / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(dirs["config"]),
           "JUPYTER_DATA_DIR": str(dirs["data"]), "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
           "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
           "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]),
           "IPYTHONDIR": str(dirs["ipython"]), "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("JUPYTER_PATH", None)
    log = tmp / "jupyterlab.log"
    cmd = [str(Path(sys.executable).parent / "jupyter-lab"), "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI and these machines run as root
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({proc.returncode}):\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not answer in 90 s:\n{log.read_text()}")
            time.sleep(0.25)  # waiting for a server to start listening: nothing to await
        yield Lab(url, token, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
