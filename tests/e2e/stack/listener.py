"""A TCP listener on the given ports (the neo4j stand-in: 7474 and 7687): accepts, answers a
line, closes. Exits on SIGTERM."""

import signal
import socket
import sys
import threading

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def serve(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port), reuse_port=True)
    while True:
        conn, _ = srv.accept()
        try:
            conn.sendall(b"neo4j stand-in\n")
        finally:
            conn.close()


for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("ready", flush=True)
signal.pause()
