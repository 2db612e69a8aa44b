"""Reading the run report as a browser would: its HTML parsed, its plots checked for
blankness, and the page rendered in Debian's headless chromium over the DevTools protocol
(no extra Python packages). Shared by tests/test_report.py."""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any


class Page(HTMLParser):
    """Tags, image sources and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text())
    return page


def blank_reason(png: bytes) -> str | None:
    """Why a PNG is not a real plot (None when it is): too small, one colour, almost empty."""
    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width < 100 or image.height < 100:
        return f"tiny image {image.size}"
    colors = image.getcolors(maxcolors=1 << 16)
    if colors is not None and len(colors) < 8:
        return f"only {len(colors)} colours"
    if max(ImageStat.Stat(image).stddev) < 10:
        return "almost no pixel variance"
    background = max(colors)[0] if colors else 0
    drawn = 1 - background / (image.width * image.height)
    if drawn < 0.02:
        return f"only {drawn:.1%} of pixels drawn"
    # Axes, ticks, grid and labels are grey; the data (bars) is coloured. Empty axes are blank.
    pixels = image.getdata()
    coloured = sum(max(p) - min(p) > 30 for p in pixels) / (image.width * image.height)
    return None if coloured >= 0.01 else f"only {coloured:.2%} coloured (data) pixels: empty axes?"


def embedded_plots(page: Page) -> dict[str, bytes]:
    plots = {}
    for tag, attrs in page.tags:
        if tag == "img":
            src = attrs.get("src") or ""
            assert src.startswith("data:image/png;base64,"), f"image not embedded: {src[:60]}"
            plots[attrs.get("data-plot") or ""] = base64.b64decode(src.split(",", 1)[1], validate=True)
    return plots


def chromium_path() -> str | None:
    return next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)


class DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-separated JSON)."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Park the child's ends above fd 10 so dup2 onto 3/4 cannot clobber one with the other.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def wire_pipe() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-extensions", "--disable-sync", "--disable-component-update", "--no-first-run",
             "--no-default-browser-check", "--mute-audio", f"--user-data-dir={profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipe, close_fds=False,  # our own fds are non-inheritable (PEP 446)
        )
        os.close(child_in)
        os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            if select.select([self._from_browser], [], [], left)[0]:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer["result"]
            self.events.append(answer)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def render_in_chromium(binary: str, page: Path, profile: Path) -> dict[str, Any]:
    """Load ``page``; return its errors, its images as the browser decoded and painted them, and its text."""
    browser = DevTools(binary, profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        probe = """JSON.stringify({
            images: [...document.images].map(i => { const r = i.getBoundingClientRect();
                return {key: i.dataset.plot, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                        x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; }),
            text: document.body.innerText})"""
        result = browser.call("Runtime.evaluate", {"expression": probe, "returnByValue": True}, session=session)
        state = json.loads(result["result"]["value"])
        for image in state["images"]:
            if image["w"] and image["h"]:
                clip = {"x": image["x"], "y": image["y"], "width": image["w"], "height": image["h"], "scale": 1}
                shot = browser.call("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": True},
                                    session=session)
                image["painted"] = base64.b64decode(shot["data"])
        errors = []
        for event in browser.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                errors.append(f"console.{params['type']}: {[a.get('value') for a in params.get('args', [])]}")
            elif method == "Runtime.exceptionThrown":
                errors.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                errors.append(f"{params['entry']['source']}: {params['entry']['text']}")
        return {"errors": errors, "images": state["images"], "text": state["text"]}
    finally:
        browser.close()
