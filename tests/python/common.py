"""Shared by the Python client tests: where Herald is (from the environment the Node test runner sets),
HS256 connection tokens made with the standard library (as a backend would with any JWT library), a
bounded wait on an asyncio queue, and a plain HTTP call to the server API for publishing."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
import urllib.request

URL = os.environ["HERALD_URL"]  # http://127.0.0.1:PORT
WS = URL.replace("http://", "ws://") + "/connection/websocket"
SECRET = os.environ.get("HERALD_SECRET", "app-secret")
API_KEY = os.environ["HERALD_API_KEY"]
WAIT = 5.0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(user: str, **claims) -> str:
    """An HS256 connection JWT for `user`, valid for an hour."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({"sub": user, "exp": int(time.time()) + 3600, **claims}).encode())
    sig = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def api(method: str, body: dict) -> dict:
    """One server API call over plain HTTP."""
    request = urllib.request.Request(
        f"{URL}/api/{method}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.loads(response.read())


def data_of(data):
    """Publication data as JSON: protobuf clients get the JSON bytes."""
    return json.loads(data) if isinstance(data, (bytes, bytearray)) else data


async def next_of(queue: asyncio.Queue, what: str, timeout: float = WAIT):
    """The next item of `queue`, or a failure naming `what` after `timeout` seconds."""
    try:
        return await asyncio.wait_for(queue.get(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def nothing_in(queue: asyncio.Queue, what: str, quiet: float = 0.3):
    """Fails if `queue` gets anything within `quiet` seconds."""
    try:
        item = await asyncio.wait_for(queue.get(), quiet)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"unexpected {what}: {item!r}")
