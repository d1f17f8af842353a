"""A recording HTTP receiver standing in for PagerDuty, Slack and webhooks (tests, bench, lab).

Records every request (path, headers, body, arrival time) and answers as scripted per path
prefix: a queue of answers consumed in order, then a default (202 for /pagerduty, 200 "ok" for
/slack, 200 otherwise). Answers can be 200/202, 400, 429 + Retry-After, 500, or slow.

As a script (for a network namespace) it prints "ready", then one JSON line per request:
    python -m sentinel.lab.alertreceiver --host 198.18.5.5 --port 8088 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_DELAY = 30.0  # a "slow" answer never holds a thread longer than this


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival
    status: int  # what we answered

    def json(self) -> Any:
        return json.loads(self.body)


def default_answer(path: str) -> Answer:
    if path.startswith("/pagerduty"):
        return Answer(202, '{"status":"success","message":"Event processed"}')
    return Answer(200, "ok")


class Receiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, echo: bool = False) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Answer]] = {}
        self._defaults: dict[str, Answer] = {}
        self._lock = threading.Lock()
        self._echo = echo
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # --- control ---------------------------------------------------------------------------
    def start(self) -> Receiver:
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def script(self, prefix: str, *answers: Answer, then: Answer | None = None) -> None:
        """Answer requests under `prefix` with `answers` in order, then with `then`."""
        with self._lock:
            self._scripts[prefix] = deque(answers)
            if then is not None:
                self._defaults[prefix] = then

    def always(self, prefix: str, answer: Answer) -> None:
        self.script(prefix, then=answer)

    def recorded(self, prefix: str = "", status: int | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(prefix) and (status is None or r.status == status)
            ]

    def accepted(self, prefix: str = "") -> list[Recorded]:
        """Requests we answered 2xx: what a real service would have acted on."""
        return [r for r in self.recorded(prefix) if 200 <= r.status < 300]

    def wait_for(self, predicate, timeout: float = 10.0, poll: float = 0.02) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(poll)
        return predicate()

    # --- serving ---------------------------------------------------------------------------
    def _answer_for(self, path: str) -> Answer:
        with self._lock:
            prefix = max((p for p in self._scripts if path.startswith(p)), key=len, default=None)
            if prefix is not None and self._scripts[prefix]:
                return self._scripts[prefix].popleft()
            if prefix is not None and prefix in self._defaults:
                return self._defaults[prefix]
        return default_answer(path)

    def _record(self, rec: Recorded) -> None:
        with self._lock:
            self.requests.append(rec)
        if self._echo:
            line = {
                "path": rec.path,
                "headers": rec.headers,
                "body": rec.body.decode("utf-8", "replace"),
                "at": rec.at,
                "status": rec.status,
            }
            with self._lock:  # handler threads print concurrently: one whole line each
                print(json.dumps(line), flush=True)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                arrived = time.time()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = receiver._answer_for(self.path)
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver._record(Recorded(self.path, headers, body, arrived, answer.status))
                if answer.delay:
                    time.sleep(min(answer.delay, MAX_DELAY))
                payload = answer.body.encode()
                try:
                    self.send_response(answer.status)
                    for key, value in answer.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout): fine, it will retry

            def log_message(self, *args: object) -> None:
                pass

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8088)
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    receiver = Receiver(args.host, args.port, echo=True).start()
    print("ready", flush=True)
    try:
        time.sleep(args.seconds)  # bounded: a forgotten receiver exits by itself
    finally:
        receiver.close()
    sys.exit(0)


if __name__ == "__main__":
    main()
