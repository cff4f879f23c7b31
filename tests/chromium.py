"""Headless Chromium driven over the DevTools protocol, for the report pages' browser tests.

The protocol goes over a pipe (`--remote-debugging-pipe`: JSON messages ending in a NUL byte, the
browser reading fd 3 and writing fd 4), so no port, no websocket library and no browser download: the
system's `chromium` (Debian's package; .ci/run installs it) is all it needs. One browser serves a whole
test module; each page gets a fresh tab.

What a page did is recorded from the protocol's events: console messages and uncaught exceptions
(`Runtime`), browser log entries such as a blocked resource or a Content-Security-Policy violation
(`Log`), and every request the page made (`Network`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The path of a Chromium-family browser on PATH (AETRAIN_CHROMIUM wins), or None."""
    given = os.environ.get("AETRAIN_CHROMIUM")
    if given:
        return shutil.which(given)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _above(fd: int, lowest: int) -> int:
    """`fd` moved to a number >= `lowest` (close-on-exec, as Python makes its fds)."""
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless browser process; `open(url)` gives a `Page` in a new tab."""

    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="aetrain-chromium-")
        # the pipe ends the browser gets are moved above fd 4 first: dup2 onto its own number (a pipe that
        # came out as fd 3) would keep the close-on-exec flag, and the browser would find nothing there
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        to_browser_r, from_browser_w = (_above(fd, 10) for fd in (to_browser_r, from_browser_w))

        def wire() -> None:  # in the child: its fd 3 reads our commands, its fd 4 writes its answers
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--mute-audio",
                f"--user-data-dir={self.profile}", "about:blank"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, preexec_fn=wire, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion")["product"]

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    self._answers[-1] = {"error": {"message": "the browser closed its pipe"}}
                    self._lock.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._lock:
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self._events.append(message)
                    self._lock.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            number = self._next_id
        message = {"id": number, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._lock:
            while number not in self._answers:
                if -1 in self._answers:
                    raise BrowserError(f"{method}: {self._answers[-1]['error']['message']}")
                if not self._lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise BrowserError(f"{method}: no answer in {self.timeout:.0f} s")
            answer = self._answers.pop(number)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def events(self, session: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self._events if e.get("sessionId") == session]

    def wait_for(self, session: str, method: str, timeout: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while True:
                found = [e for e in self._events if e.get("sessionId") == session and e.get("method") == method]
                if found:
                    return found[-1]
                if not self._lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise BrowserError(f"no {method} in {timeout or self.timeout:.0f} s")

    def open(self, url: str, *, width: int = 1400, height: int = 1000) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, target, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            page.send(f"{domain}.enable")
        page.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        page.send("Page.navigate", {"url": url})
        self.wait_for(session, "Page.loadEventFired")
        return page

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except BrowserError:
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """A tab: evaluate JavaScript in it, click and drag with the real input pipeline, read what it did."""

    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser, self.target, self.session = browser, target, session

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression (a promise is awaited); a thrown error fails the test."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def mouse(self, kind: str, x: float, y: float, buttons: int = 1) -> None:
        self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                               "buttons": buttons, "clickCount": 1})

    def drag(self, x: float, y0: float, y1: float, steps: int = 6) -> None:
        """Press at (x, y0), move to (x, y1), release: a real drag, through the browser's input events."""
        self.mouse("mouseMoved", x, y0, buttons=0)
        self.mouse("mousePressed", x, y0)
        for i in range(1, steps + 1):
            self.mouse("mouseMoved", x, y0 + (y1 - y0) * i / steps)
        self.mouse("mouseReleased", x, y1, buttons=0)

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y, buttons=0)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y, buttons=0)

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and the browser's error log entries (a resource
        that failed to load, a blocked request, a Content-Security-Policy violation)."""
        out = []
        for e in self.browser.events(self.session):
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails"))[:500])
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") in ("error", "warning"):
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        """The URL of every request the page made (the page's own file:// URL and data: URLs included)."""
        return [e["params"]["request"]["url"] for e in self.browser.events(self.session)
                if e["method"] == "Network.requestWillBeSent"]

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
