"""The lab's stand-in for Slack / PagerDuty / a webhook: an HTTP server that records requests.

alertsink.py PORT OUTFILE [--seconds S]

Listens on 127.0.0.1:PORT (inside the app namespace: only loopback, nothing leaves), answers
every POST with the status code its sink expects (Slack 200 "ok", PagerDuty 202, webhook 200),
and appends one JSON line per request to OUTFILE: path, headers (authorization redacted), body.
Prints "ready" once listening; exits after --seconds.
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()


def handler_for(outfile: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            size = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(size, 1 << 20)).decode("utf-8", "replace")
            headers = {
                k: ("<redacted>" if k.lower() in ("authorization", "x-signature") else v)
                for k, v in self.headers.items()
            }
            record = {"ts": time.time(), "path": self.path, "headers": headers, "body": body}
            with LOCK, open(outfile, "a") as f:
                f.write(json.dumps(record) + "\n")
            status = 202 if "pagerduty" in self.path else 200
            reply = b'{"status":"success"}' if status == 202 else b"ok"
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args) -> None:  # keep the lab's output clean
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("outfile")
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(args.outfile))
    server.daemon_threads = True
    threading.Timer(args.seconds, server.shutdown).start()
    print("ready", flush=True)
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
