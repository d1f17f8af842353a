"""A large, realistic event store made in bulk SQL (bench/bench_report.py, the report tests).

Rows go through the store's own schema (`events.connect` migrates the file) and are made by
one `INSERT ... SELECT` over a recursive counter, in time order as the daemon writes them:
kernel attempts (blocked, some audited), DNS refusals, guard blocks with pid/exe/stack,
audited guard calls each followed by the kernel's sighting of the same flow (the join),
monitor heartbeats every 5 s, guard heartbeats of three processes, kernel counter readings
every 60 s with NFLOG and set counters, and a few dns_dropped, monitor_lost and canary events.
Everything derives from `seed`: the same arguments give the same store.
"""

from __future__ import annotations

import json
from pathlib import Path

from sentinel.store import events as ev

# i -> a pseudo-random 32-bit number (a multiplicative hash: deterministic, fast in SQL)
_H = "((({i} + :seed) * 2654435761) % 4294967296)"

_ATTEMPTS = f"""
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :count - 1),
r AS (SELECT i, {_H.format(i="i")} AS h, {_H.format(i="i * 7 + 3")} AS g FROM n)
INSERT INTO events (id, ts, layer, kind, verdict, protocol, family, src_ip, src_port,
                    dst_ip, dst_port, dst_name, packets, last_ts, pid, exe, stack, detail)
SELECT printf('%08x-0000-4000-8000-%012x', :seed, i),
       :since + :span * (i + (g % 1000) / 1000.0) / :count,
       CASE WHEN h % 100 < 55 THEN 'netfilter' WHEN h % 100 < 80 THEN 'dns' ELSE 'guard' END,
       CASE WHEN h % 100 BETWEEN 55 AND 79 THEN (CASE WHEN g % 10 = 0 THEN 'dns_refused'
            ELSE 'egress_attempt' END)
            WHEN h % 100 >= 97 THEN 'connect_blocked' ELSE 'egress_attempt' END,
       CASE WHEN h % 100 < 55 AND g % 20 = 0 THEN 'audited' ELSE 'blocked' END,
       CASE WHEN h % 100 BETWEEN 55 AND 79 THEN 'dns' WHEN g % 50 = 1 THEN 'udp'
            WHEN g % 97 = 2 THEN 'icmp' ELSE 'tcp' END,
       CASE WHEN h % 100 BETWEEN 55 AND 79 THEN NULL WHEN g % 13 = 0 THEN 6 ELSE 4 END,
       CASE WHEN h % 100 < 55 THEN '10.0.0.2' END,
       CASE WHEN h % 100 < 55 THEN 30000 + g % 30000 END,
       CASE WHEN h % 100 BETWEEN 55 AND 79 THEN NULL WHEN g % 13 = 0
            THEN printf('2001:db8::%x', (h / 100) % :dests)
            ELSE printf('198.18.%d.%d', ((h / 100) % :dests) / 254 % 256,
                        ((h / 100) % :dests) % 254 + 1) END,
       CASE WHEN h % 100 BETWEEN 55 AND 79 THEN 53 WHEN g % 97 = 2 THEN NULL
            ELSE (443, 80, 8443, 5432)[0] END,
       CASE WHEN h % 100 BETWEEN 55 AND 79 THEN printf('host%d.example', (h / 100) % :names)
            END,
       CASE WHEN h % 100 < 55 THEN 1 + (g % 7 = 0) * (g % 4) ELSE 1 END,
       CASE WHEN h % 100 < 55 AND g % 7 = 0 THEN :since + :span * i / :count + 1.5 END,
       CASE WHEN h % 100 >= 80 THEN 1000 + g % 3 END,
       CASE WHEN h % 100 >= 80 THEN '/usr/bin/python3' END,
       CASE WHEN h % 100 >= 80 THEN printf('app/worker.py:%d in send', 10 + g % 40) END,
       CASE WHEN h % 100 BETWEEN 55 AND 79 THEN '{{"qtype": "A"}}'
            WHEN h % 100 >= 80 THEN '{{"reason": "not allowlisted"}}' ELSE '{{}}' END
FROM r
"""
# SQLite has no tuple indexing: the port is chosen by a CASE on g (replaced below)
_ATTEMPTS = _ATTEMPTS.replace(
    "(443, 80, 8443, 5432)[0]",
    "CASE g % 4 WHEN 0 THEN 443 WHEN 1 THEN 80 WHEN 2 THEN 8443 ELSE 5432 END",
)

# an audited guard call, then the kernel's sighting of the same flow 0.3 s later
_PAIRS = f"""
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :pairs - 1),
r AS (SELECT i, {_H.format(i="i + 9000001")} AS h FROM n),
p AS (SELECT i, h, :since + :span * (i + 0.5) / :pairs AS ts,
             printf('198.18.%d.%d', 200 + h % 50, 1 + (h / 50) % 250) AS ip FROM r)
INSERT INTO events (id, ts, layer, kind, verdict, protocol, family, dst_ip, dst_port, packets,
                    pid, exe, stack, detail)
SELECT printf('%08x-0000-4000-9000-%012x', :seed, i), ts, 'guard', 'egress_attempt',
       'audited', 'tcp', 4, ip, 443, 1, 2000 + h % 5, '/usr/bin/python3', 'app/leak.py:7 in call',
       '{{"reason": "audit"}}' FROM p
UNION ALL
SELECT printf('%08x-0000-4000-a000-%012x', :seed, i), ts + 0.3, 'netfilter', 'egress_attempt',
       'audited', 'tcp', 4, ip, 443, 1, NULL, NULL, NULL, '{{}}' FROM p
"""


def _bookkeeping(since: float, span: float, sets: int) -> list[tuple]:
    """Heartbeats, counter readings and the rarer sensor events (a few tens of thousands)."""
    rows: list[tuple] = []

    def add(i: int, ts: float, layer: str, kind: str, detail: dict, pid=None, **kw) -> None:
        rows.append(
            (f"bk-{kind}-{i}", ts, layer, kind, kw.get("verdict", "info"), kw.get("protocol"),
             kw.get("dst_ip"), kw.get("dst_port"), pid, json.dumps(detail, sort_keys=True))
        )  # fmt: skip

    stats = {"lost": 0, "overruns": 0, "malformed": 0}
    for i in range(int(span / 5)):
        ts = since + i * 5.0
        stats = {**stats, "lost": i // 4000, "malformed": i // 9000}
        add(i, ts, "sentinel", "monitor_heartbeat",
            {"state": "running", "interval": 5.0, "ruleset_sha256": "r" * 64, "mode": "enforce",
             "pid": 7, "started_at": since - 100, "stats": stats})  # fmt: skip
        for proc in range(3):
            identity = {"identity": f"pid:{1000 + proc}:1", "verified": True}
            add(i * 3 + proc, ts + 0.5 + proc, "guard", "guard_heartbeat",
                {"interval": 5.0, "state": "running", "sender": identity,
                 "counters": {"dropped_total": i // 3000}}, pid=1000 + proc)  # fmt: skip
        if i % 12 == 0:
            entries = {f"198.18.0.{e + 2},tcp:443": [i * (e + 1), i * (e + 1) * 80]
                       for e in range(sets)}  # fmt: skip
            add(
                i,
                ts + 0.1,
                "sentinel",
                "kernel_counters",
                {"applied_at": since - 100, "nflog": {"4": i * 30, "6": i}, "sets": entries},
            )
        if i % 2000 == 7:
            add(i, ts + 0.2, "dns", "dns_dropped", {"udp_dropped": 3, "tcp_refused": i % 2})
        if i % 5000 == 11:
            add(
                i,
                ts + 0.3,
                "sentinel",
                "monitor_lost",
                {"component": "resolver", "reason": "no answer", "resolved": i % 10000 == 11},
            )
        if i % 700 == 3:
            outcome = "escaped" if i % 7000 == 3 else "refused"
            add(i, ts + 0.4, "canary", "canary_escaped" if outcome == "escaped" else
                "canary_result", {"outcome": outcome}, verdict="info", protocol="tcp",
                dst_ip="198.18.9.9", dst_port=443)  # fmt: skip
    return rows


def build(
    path: Path,
    count: int,
    until: float,
    span: float = 86_400.0,
    seed: int = 17,
    dests: int = 2000,
    names: int = 500,
    sets: int = 3,
) -> int:
    """Make (or add to) the store at `path`: about `count` events over [until - span, until).
    Returns the number of event rows written."""
    conn = ev.connect(path)
    conn.execute("PRAGMA cache_size = -65536")  # 64 MB while filling: index pages stay hot
    since = until - span
    book = _bookkeeping(since, span, sets)
    pairs = max(1, count // 100)
    attempts = max(0, count - len(book) - 2 * pairs)
    args = {"seed": seed, "since": since, "span": span, "dests": dests, "names": names}
    with ev.transaction(conn):
        if attempts > 0:
            conn.execute(_ATTEMPTS, {**args, "count": attempts})
        conn.execute(_PAIRS, {"seed": seed, "since": since, "span": span, "pairs": pairs})
        conn.executemany(
            "INSERT INTO events (id, ts, layer, kind, verdict, protocol, dst_ip, dst_port, pid, "
            "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            book,
        )
        conn.execute(
            "INSERT INTO shed (ts, layer, count) VALUES (?, 'netfilter', 12), (?, 'guard', 3)",
            (since + span / 3, since + span / 2),
        )
    conn.close()
    return attempts + 2 * pairs + len(book)


def main() -> None:  # python -m sentinel.lab.bigstore PATH COUNT
    import sys
    import time

    started = time.perf_counter()
    n = build(Path(sys.argv[1]), int(sys.argv[2]), time.time())
    print(f"{n} events in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
