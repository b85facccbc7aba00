"""Open a page in real headless Chromium over the DevTools protocol: its DOM, a screenshot, the
console errors and every network request it made.

A small WebSocket client (RFC 6455, text frames only) is enough for the protocol, so the
tests need no extra package.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
import zlib
from dataclasses import dataclass, field

from d4p_hpc.report.page import browser_argv


class WebSocket:
    def __init__(self, url: str) -> None:
        host, port, path = re.fullmatch(r"ws://([^:/]+):(\d+)(/.*)", url).groups()
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            message += self._exact(n)
            if b0 & 0x80:
                return message.decode()


@dataclass
class Page:
    dom: str
    png: bytes
    console_errors: list = field(default_factory=list)
    requests: list = field(default_factory=list)


def open_page(url: str, width: int = 1000, height: int = 1400) -> Page:
    """Load ``url`` in a fresh headless Chromium and gather what the tests look at."""
    with tempfile.TemporaryDirectory(prefix="d4p-chromium-", ignore_cleanup_errors=True) as profile:
        argv = browser_argv(profile) + ["--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = None
            deadline = time.monotonic() + 60
            while port is None and time.monotonic() < deadline:
                line = proc.stderr.readline()
                match = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
                port = match and match[1]
            assert port, "Chromium did not start its DevTools server"
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30))
            ws = WebSocket(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
            return _drive(ws, url)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _drive(ws: WebSocket, url: str) -> Page:
    ids = iter(range(1, 10 ** 6))
    events: list[dict] = []

    def call(method: str, **params) -> dict:
        n = next(ids)
        ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            message = json.loads(ws.recv())
            if message.get("id") == n:
                assert "error" not in message, message
                return message.get("result", {})
            events.append(message)

    for domain in ("Page", "Runtime", "Log", "Network"):
        call(f"{domain}.enable")
    call("Page.navigate", url=url)
    while not any(e.get("method") == "Page.loadEventFired" for e in events):
        events.append(json.loads(ws.recv()))
    time.sleep(0.5)  # late console messages
    dom = call("Runtime.evaluate", expression="document.documentElement.outerHTML")["result"]["value"]
    png = base64.b64decode(call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
    errors = [e["params"] for e in events if
              e.get("method") == "Runtime.exceptionThrown" or
              (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert")) or
              (e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error")]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return Page(dom, png, errors, requests)


def distinct_pixels(png: bytes) -> int:
    """How many distinct byte values the decompressed image data holds (a blank page has about 2)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, data = 8, b""
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        if kind == b"IDAT":
            data += png[pos + 8:pos + 8 + n]
        pos += 12 + n
    return len(set(zlib.decompress(data)))
