"""Bypass canaries: probe the routes out of the app's namespace on a schedule (off by default).

The target is an address of the user's own that accepts on `canary.port` (TCP) and echoes UDP.
In enforce mode every probe must be refused locally by the REJECT rule; a probe that gets an
answer from the target has escaped, which is a P1. Probe sockets carry CANARY_MARK: not the
exemption mark, so the rules treat them exactly like the app's packets, but the monitor can tell
them apart from real attempts (the app cannot set a mark without CAP_NET_ADMIN).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from sentinel.enforce.marks import marked_socket
from sentinel.log import get_logger
from sentinel.policy.load import CanarySettings, Policy
from sentinel.store.events import Event
from sentinel.store.state import write_json

CANARY_MARK = 0x5E48
TIMEOUT = 1.0
log = get_logger("canary")


@dataclass(frozen=True)
class CanaryResult:
    probe: str  # tcp4, tcp6, udp4, udp6, dot4, ...
    target: str
    outcome: str  # blocked | escaped | unknown
    detail: str
    ts: float = field(default_factory=time.time)


def _socket(family: int, kind: int) -> socket.socket:
    sock = marked_socket(family, kind, CANARY_MARK)
    sock.settimeout(TIMEOUT)
    return sock


def probe_tcp(name: str, family: int, host: str, port: int) -> CanaryResult:
    with _socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.connect((host, port))
            return CanaryResult(name, f"{host}:{port}", "escaped", "TCP handshake completed")
        except ConnectionRefusedError:
            return CanaryResult(name, f"{host}:{port}", "blocked", "refused (REJECT)")
        except OSError as exc:  # timeout: the SYN may have left and been dropped elsewhere
            return CanaryResult(name, f"{host}:{port}", "unknown", type(exc).__name__)


def probe_udp(name: str, family: int, host: str, port: int) -> CanaryResult:
    with _socket(family, socket.SOCK_DGRAM) as sock:
        try:
            # unconnected: a reply from any address of the target counts as an escape
            sock.sendto(b"sentinel-canary", (host, port))
            sock.recvfrom(512)
            return CanaryResult(name, f"{host}:{port}", "escaped", "the target answered")
        except ConnectionRefusedError:
            return CanaryResult(name, f"{host}:{port}", "blocked", "refused (REJECT)")
        except PermissionError:  # netfilter dropped it in OUTPUT: send() says EPERM
            return CanaryResult(name, f"{host}:{port}", "blocked", "EPERM from the OUTPUT chain")
        except OSError as exc:
            return CanaryResult(name, f"{host}:{port}", "unknown", type(exc).__name__)


def run_canaries(settings: CanarySettings) -> list[CanaryResult]:
    """One round of probes against the configured targets."""
    results = []
    if settings.target:
        results += [
            probe_tcp("tcp4", socket.AF_INET, settings.target, settings.port),
            probe_udp("udp4", socket.AF_INET, settings.target, settings.port),
            probe_tcp("dot4", socket.AF_INET, settings.target, 853),
        ]
    if settings.target6:
        results += [
            probe_tcp("tcp6", socket.AF_INET6, settings.target6, settings.port),
            probe_udp("udp6", socket.AF_INET6, settings.target6, settings.port),
        ]
    return results


def result_events(results: list[CanaryResult]) -> list[Event]:
    """An escaped probe is a P1 egress event; the rest are recorded for the report."""
    return [
        Event(
            layer="canary",
            kind="canary_escaped" if r.outcome == "escaped" else "canary_result",
            verdict="info" if r.outcome != "escaped" else "audited",
            protocol=r.probe[:3],
            dst_ip=r.target.rsplit(":", 1)[0],
            dst_port=int(r.target.rsplit(":", 1)[1]),
            detail={"outcome": r.outcome, "detail": r.detail},
        )
        for r in results
    ]


class CanaryService:
    """Runs a round every `canary.interval` in a thread; writes canary.json for the report.

    A round that raises (a full state dir, a socket error) is logged, counted in `stats()` and
    in canary.json, and reported as one `canary_failed` event per streak of failures; the
    thread goes on with the next round."""

    def __init__(self, policy: Policy, emit: Callable[[Event], None]) -> None:
        self.settings = policy.canary
        self.emit = emit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="canary", daemon=True)
        self.counts = {"rounds": 0, "errors": 0, "escaped": 0}
        self._failing = 0  # failed rounds in a row

    @property
    def enabled(self) -> bool:
        return bool(self.settings.target or self.settings.target6)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def stats(self) -> dict[str, int]:
        return {**self.counts, "failing": self._failing}

    def run_once(self) -> list[CanaryResult]:
        results = run_canaries(self.settings)
        self.counts["rounds"] += 1
        self.counts["escaped"] += sum(r.outcome == "escaped" for r in results)
        for event in result_events(results):  # an escape pages even when the write fails
            self.emit(event)
        stats = {**self.counts, "failing": 0}  # written only by a round that worked
        write_json(
            "canary.json",
            {"ts": time.time(), "results": [asdict(r) for r in results], "stats": stats},
        )
        return results

    def safe_round(self) -> None:
        try:
            self.run_once()
        except Exception as exc:  # noqa: BLE001 - the canary must outlive one bad round
            self.counts["errors"] += 1
            self._failing += 1
            error = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
            log.error("canary_round_failed", error=error, failing=self._failing)
            if self._failing == 1:
                self.emit(
                    Event(
                        layer="canary",
                        kind="canary_failed",
                        verdict="info",
                        detail={"error": error, "message": error, "errors": self.counts["errors"]},
                    )
                )
            return
        self._failing = 0

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.safe_round()
            self._stop.wait(self.settings.interval)
