"""Headless Chromium driven through Debian's chromedriver, spoken to in plain W3C WebDriver (JSON over HTTP with
urllib): pages are loaded with their JavaScript executed, read back with scripts run in the page, and
screenshotted. Nothing is downloaded: it uses the `chromium` and `chromium-driver` packages already installed.

Used by tests/integration/test_dashboard_browser.py and bench/dashboard_shot.py (the dashboard checked as a user
sees it, not through its JSON API).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
WIDTH, HEIGHT = 1400, 1000  # the default window, CSS pixels


def _which(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing_browser() -> str | None:
    """None when headless Chromium and its driver are installed, else one line saying what is missing and how to
    install it (Debian: `apt-get install -y chromium chromium-driver`)."""
    missing = [
        what for what, names in (("chromium", CHROMIUM_NAMES), ("chromedriver", DRIVER_NAMES)) if not _which(names)
    ]
    if not missing:
        return None
    return f"{' and '.join(missing)} not found on PATH; install with: apt-get install -y chromium chromium-driver"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BrowserError(RuntimeError):
    """The driver or the page did not do what was asked (message says what, with the driver's own error)."""


class Browser:
    """One headless Chromium window of `width` x `height` CSS pixels. Use as a context manager:

    with Browser() as b:
        b.get("http://127.0.0.1:8080/")
        title = b.wait_for("return document.title || null", timeout_s=30)
        b.screenshot(Path("page.png"))
    """

    def __init__(self, width: int = WIDTH, height: int = HEIGHT) -> None:
        problem = missing_browser()
        if problem:
            raise BrowserError(problem)
        self.width, self.height = width, height
        self._driver: subprocess.Popen[bytes] | None = None
        self._base = ""
        self._session = ""

    def __enter__(self) -> Browser:
        port = free_port()
        self._driver = subprocess.Popen(
            [str(_which(DRIVER_NAMES)), f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._base = f"http://127.0.0.1:{port}"
        try:
            self._wait_driver_ready(timeout_s=30)
            args = ["--headless=new", f"--window-size={self.width},{self.height}", "--disable-gpu"]
            args += ["--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run", "--disable-extensions"]
            if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox (CI containers run as root)
                args.append("--no-sandbox")
            options = {"binary": str(_which(CHROMIUM_NAMES)), "args": args}
            caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
            self._session = str(self._call("POST", "/session", caps, timeout_s=60)["sessionId"])
        except BaseException:
            self._stop_driver()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self._session:
                self._call("DELETE", f"/session/{self._session}", None, timeout_s=20)
        except BrowserError:
            pass  # the driver is stopped below either way
        finally:
            self._stop_driver()

    def get(self, url: str) -> None:
        """Load `url` (returns once the document has loaded; the page's own fetches may still be running)."""
        self._call("POST", f"/session/{self._session}/url", {"url": url}, timeout_s=60)

    def execute(self, script: str, *args: Any) -> Any:
        """Run `script` (a function body: `return ...`) in the page; returns its JSON-serialisable result."""
        body = {"script": script, "args": list(args)}
        return self._call("POST", f"/session/{self._session}/execute/sync", body, timeout_s=30)

    def wait_for(self, script: str, *args: Any, timeout_s: float = 30.0, what: str = "") -> Any:
        """Poll `script` every 0.25 s until it returns something truthy; return that. Raises BrowserError naming
        `what` (or the script) after `timeout_s` seconds."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = self.execute(script, *args)
            if last:
                return last
            time.sleep(0.25)
        raise BrowserError(f"timed out after {timeout_s:.0f} s waiting for {what or script!r} (last: {last!r})")

    def text(self) -> str:
        """The page's visible text (`document.body.innerText`)."""
        return str(self.execute("return document.body ? document.body.innerText : ''"))

    def screenshot(self, path: Path) -> Path:
        """Save the window as PNG at `path` (parents created); returns `path`."""
        data = self._call("GET", f"/session/{self._session}/screenshot", None, timeout_s=30)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(str(data)))
        return path

    def _wait_driver_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._driver is not None and self._driver.poll() is not None:
                raise BrowserError(f"chromedriver exited with code {self._driver.returncode} at start")
            try:
                if self._call("GET", "/status", None, timeout_s=2).get("ready"):
                    return
            except BrowserError:
                pass
            time.sleep(0.1)
        raise BrowserError(f"chromedriver did not become ready within {timeout_s:.0f} s")

    def _call(self, method: str, path: str, body: Any, timeout_s: float) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                payload = json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:  # WebDriver errors come back as 4xx/5xx with a JSON body
            detail = exc.read().decode(errors="replace")
            try:
                value = json.loads(detail).get("value", {})
                detail = f"{value.get('error')}: {str(value.get('message', '')).splitlines()[0]}"
            except (ValueError, AttributeError, IndexError):
                pass
            raise BrowserError(f"{method} {path}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise BrowserError(f"{method} {path}: {exc}") from None
        return payload.get("value")

    def _stop_driver(self) -> None:
        if self._driver is None:
            return
        self._driver.terminate()
        try:
            self._driver.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._driver.kill()
            self._driver.wait()
        self._driver = None


def poll(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Call `check` until it returns something truthy (then return it) or `timeout_s` passes (AssertionError)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s: {what}")
