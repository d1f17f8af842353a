"""A stand-in speaking Ollama's HTTP API on 11434 (no model weights can be fetched here).

/api/tags lists the models; /api/embed and /api/embeddings return deterministic 768-dim vectors
(a hash of the text, normalised); /api/generate and /api/chat answer a fixed text; /api/pull
succeeds. Counts requests per path in /tmp/ollama-counts.json.
"""

import hashlib
import json
import math
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIMS = 768
MODELS = ["nomic-embed-text:latest", "llama3.1:latest"]
counts: dict[str, int] = {}
lock = threading.Lock()


def vector(text: str) -> list[float]:
    raw = b""
    seed = text.encode()
    while len(raw) < DIMS * 2:
        seed = hashlib.sha256(seed).digest()
        raw += seed
    v = [(raw[2 * i] * 256 + raw[2 * i + 1]) / 65535.0 - 0.5 for i in range(DIMS)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [x / norm for x in v]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _count(self) -> None:
        with lock:
            counts[self.path] = counts.get(self.path, 0) + 1
            with open("/tmp/ollama-counts.json", "w") as f:
                json.dump(counts, f)

    def do_GET(self):
        self._count()
        if self.path.startswith("/api/tags"):
            return self._send({"models": [{"name": m, "model": m} for m in MODELS]})
        return self._send({"status": "Ollama is running"})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self._count()
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        model = body.get("model", MODELS[0])
        if self.path == "/api/embed":
            texts = body.get("input", "")
            texts = [texts] if isinstance(texts, str) else texts
            return self._send({"model": model, "embeddings": [vector(t) for t in texts]})
        if self.path == "/api/embeddings":
            return self._send({"embedding": vector(body.get("prompt", ""))})
        if self.path == "/api/generate":
            return self._send({"model": model, "response": "ok", "done": True})
        if self.path == "/api/chat":
            return self._send(
                {"model": model, "message": {"role": "assistant", "content": "ok"}, "done": True}
            )
        return self._send({"status": "success"})


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = ThreadingHTTPServer(("0.0.0.0", 11434), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
