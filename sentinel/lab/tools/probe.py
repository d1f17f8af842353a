"""Try one connection from inside a namespace and print the outcome as JSON.

probe.py tcp HOST PORT [--timeout S] | probe.py udp HOST PORT
"""

import argparse
import json
import socket
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("proto", choices=["tcp", "udp"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    start = time.monotonic()
    out = {"ok": False, "error": None, "reply": None}
    try:
        info = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_STREAM)[0]
        kind = socket.SOCK_STREAM if args.proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(info[0], kind) as s:
            s.settimeout(args.timeout)
            if args.proto == "tcp":
                s.connect(info[4])
            else:
                s.sendto(b"probe", info[4])
            out["reply"] = s.recv(64).decode()
            out["ok"] = True
    except OSError as exc:
        out["error"] = type(exc).__name__ + ": " + str(exc)
    out["elapsed"] = time.monotonic() - start
    print(json.dumps(out))


if __name__ == "__main__":
    main()
