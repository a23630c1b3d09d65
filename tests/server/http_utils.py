"""Small HTTP helpers for the generate endpoints (urllib only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def post(url: str, body, timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"error": raw.decode(errors="replace")}


def stream(url: str, body: dict, timeout: float = 120) -> list[dict]:
    """POST to generate_stream; the parsed `data:` events (an error event included)."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    events = []
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            for line in r:
                line = line.decode().strip()
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
    except urllib.error.HTTPError as e:
        # An error before streaming starts: a JSON body, or an SSE `data:` line (non-decoupled models).
        raw = e.read().decode(errors="replace").strip()
        raw = raw[5:] if raw.startswith("data:") else raw
        try:
            events.append(json.loads(raw) | {"status": e.code})
        except ValueError:
            events.append({"error": raw, "status": e.code})
    return events
