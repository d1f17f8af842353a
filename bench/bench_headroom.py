"""Detection headroom (issue 17, goal 5): N distinct attempts in S seconds through a real
`sentinel run`, every one recorded or its loss counted where it happened.

Run as root: `python bench/bench_headroom.py [--attempts 100000] [--seconds 10]`. Everything
happens in namespaces this script creates (unique prefix) and deletes; the attempts are UDP
datagrams from the app namespace to 198.18.5.5 and 2001:db8::5 (addresses the topology's
"outside" host owns), one distinct destination port per attempt and family, rejected by the
enforce ruleset on the way out. Loops are bounded in count and time. Prints JSON; not a test.

Figures:
- recorded/attempted: distinct (family, port) egress_attempt rows in the store / datagrams sent;
- unaccounted: the kernel's NFLOG rule counters against the packets stored (`sentinel report`);
- where anything was shed: the kernel socket (ENOBUFS, sequence-number gaps: `monitor_loss`),
  the store's queue (`shed_by_layer`), and the monitor's own counters from its last heartbeat;
- latency: attempt (send time) -> event (the monitor's read time, `ts`) p50/p99/max, and attempt
  -> queryable in the store (polled every `--poll` s, so that resolution is its floor).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sentinel.lab.netns import PYTHON, Topology

GOAL = {"recorded_ratio": 1.0, "unaccounted": 0, "latency_p99_ms": 1000}
POLICY = """\
version: 1
mode: enforce
allow:
  - {name: postgres, host: postgres, ports: [5432], protocol: tcp}
dns: {min_ttl: 30s, listen_port: 5300}
monitor: {tamper_interval: 5s}
"""

# Runs in the app namespace. Send times go to a file (argv[3]) as "family port time" lines.
FLOOD = r"""
import socket, sys, time
n, seconds, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
lines, start = [], time.monotonic()
deadline = start + seconds * 3  # hard bound
for i in range(n):
    due = start + seconds * i / n
    now = time.monotonic()
    if now < due - 0.0005:
        time.sleep(due - now)
    if now > deadline:
        break
    port = 10000 + i // 2
    sock, dst, fam = (s4, "198.18.5.5", 4) if i % 2 == 0 else (s6, "2001:db8::5", 6)
    t = time.time()
    try:
        sock.sendto(b"x", (dst, port))
    except OSError:
        pass  # EPERM / ECONNREFUSED: rejected by the ruleset, which is the point
    lines.append(f"{fam} {port} {t}")
with open(out, "w") as f:
    f.write("\n".join(lines) + "\n")
print(time.monotonic() - start, flush=True)
"""


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


class Sentinel:
    """`sentinel run` in the app namespace, its log to a file (a pipe nobody reads would fill
    and stall the daemon under a flood of logged events)."""

    def __init__(self, topo: Topology, policy: Path, state: Path) -> None:
        self.log = state.parent / "sentinel-run.log"
        self.ready = state.parent / "ready.json"
        exe = str(Path(PYTHON).with_name("sentinel"))
        cmd = ["ip", "netns", "exec", topo.ns("app"), exe, "run", "--policy", str(policy)]
        cmd += ["--ready-file", str(self.ready)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
            env={**os.environ, "SENTINEL_STATE_DIR": str(state)},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError("sentinel run exited:\n" + self.log.read_text()[-3000:])
            time.sleep(0.2)
        if not self.ready.exists():
            self.stop()
            raise RuntimeError("sentinel run not ready in 60 s:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Standalone(Sentinel):
    """`sentinel apply` then the monitor alone (`python -m sentinel.detect.nflog`: the monitor
    and the store, without `sentinel run`'s other sinks: log line, alerts, metrics, watchdog)."""

    def __init__(self, topo: Topology, policy: Path, state: Path) -> None:
        self.log = state.parent / "monitor.log"
        env = {**os.environ, "SENTINEL_STATE_DIR": str(state)}
        applied = topo.sentinel("apply", "--policy", str(policy))
        if applied.returncode:
            raise RuntimeError(applied.stderr)
        cmd = ["ip", "netns", "exec", topo.ns("app"), PYTHON, "-m", "sentinel.detect.nflog"]
        self.proc = subprocess.Popen(
            [*cmd, "--policy", str(policy), "--seconds", "900"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            env=env,
        )
        if self.proc.stdout is None or self.proc.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError("monitor not ready:\n" + self.log.read_text()[-3000:])


def poll_store(db: Path, sent: Callable[[], dict], send_done: subprocess.Popen, args) -> dict:
    """First time each (family, port) was queryable; until all are, or the deadline."""
    seen: dict[tuple[int, int], float] = {}
    last_rowid = 0
    deadline = time.monotonic() + args.seconds * 3 + 300  # hard bound
    progress = time.monotonic()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        while time.monotonic() < deadline and time.monotonic() - progress < 30:
            rows = conn.execute(
                "SELECT rowid, family, dst_port FROM events WHERE rowid > ? AND "
                "kind = 'egress_attempt' AND dst_port >= 10000",
                (last_rowid,),
            ).fetchall()
            now = time.time()
            if rows:
                progress = time.monotonic()
            for rowid, family, port in rows:
                last_rowid = max(last_rowid, rowid)
                seen.setdefault((family, port), now)
            if send_done.poll() is not None and len(seen) >= len(sent()):
                break
            time.sleep(args.poll)
    finally:
        conn.close()
    return seen


def stored_ts(db: Path) -> dict[tuple[int, int], float]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT family, dst_port, ts FROM events "
            "WHERE kind = 'egress_attempt' AND dst_port >= 10000"
        ).fetchall()
    return {(family, port): ts for family, port, ts in rows}


def last_monitor_stats(db: Path) -> dict:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT detail FROM events WHERE kind = 'monitor_heartbeat' ORDER BY ts DESC LIMIT 1"
        ).fetchone()
    return json.loads(row[0]).get("stats", {}) if row else {}


def pipeline(n: int) -> dict:
    """Where the time goes, in this process: CPU per attempt of the monitor's handling of real
    NFLOG message bytes (parse, fold, event), batches of QTHRESH messages as one read returns
    them, then with each of `sentinel run`'s sinks added as the daemon subscribes them (its log
    line, the store's put plus its writer thread, the metrics, the alert dispatcher with its
    router thread). Best of three. The budget for 10,000 attempts/s is 100 us on one core for
    everything."""
    import socket
    import struct

    from sentinel.alerts.service import AlertService
    from sentinel.detect.nflog import Monitor
    from sentinel.detect.packets import NFULA_PAYLOAD, NFULA_PREFIX, NFULA_SEQ
    from sentinel.enforce.nflog_socket import QTHRESH, _attr
    from sentinel.evidence import metrics
    from sentinel.log import configure
    from sentinel.policy.load import load_policy
    from sentinel.run.context import Context, quiet_log_sink
    from sentinel.run.services import put_each
    from sentinel.store.events import EventStore

    work = Path(tempfile.mkdtemp(prefix="sentinel-pipeline-"))
    os.environ["SENTINEL_STATE_DIR"] = str(work)  # the alert outbox's home
    (work / "policy.yaml").write_text(POLICY)
    policy = load_policy(work / "policy.yaml")
    configure("info", stream=(work / "stderr.log").open("w"), log_file=work / "sentinel.log")
    src, dst = socket.inet_aton("198.18.0.10"), socket.inet_aton("198.18.5.5")

    def message(i: int) -> bytes:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 29, 1, 0, 64, 17, 0, src, dst)
        udp = struct.pack("!HHHH", 40000, 10000 + i % 50000, 9, 0) + b"x"
        head = struct.pack("!BBH", socket.AF_INET, 0, 1) + _attr(NFULA_PREFIX, b"sentinel:deny\0")
        return head + _attr(NFULA_SEQ, struct.pack("!I", i)) + _attr(NFULA_PAYLOAD, ip + udp)

    bodies = [message(i) for i in range(n)]
    batches = [bodies[i : i + QTHRESH] for i in range(0, n, QTHRESH)]
    out = {}
    for stage, names in (
        ("monitor_only", ()),
        ("+log_line", ("log",)),
        ("+store", ("log", "store")),
        ("+metrics", ("log", "store", "metrics")),
        ("+alerts", ("log", "store", "metrics", "alerts")),
    ):
        best = float("inf")
        for attempt in range(3):
            store = EventStore(work / f"{stage}-{attempt}.db").start()
            ctx = Context(policy, work, "nft")
            if "log" in names:
                ctx.add_sink(quiet_log_sink)  # its batch form is the bus' own
            if "store" in names:
                ctx.add_sink(store.put, many=put_each(store))
            alerts = AlertService(ctx) if "alerts" in names else None
            if "metrics" in names:
                ctx.add_sink(metrics.observe_event, many=metrics.observe_events)
            if alerts:
                alerts.start()
            monitor = Monitor(
                policy,
                ctx.emit,
                info=dict,
                snapshot=dict,
                snapshot_every=0,
                emit_many=ctx.emit_many,
            )
            cpu, now = time.process_time(), time.time()
            for batch in batches:
                monitor.handle_many(batch, now)
            store.flush(120)
            if alerts:
                alerts.stop()  # routes what is queued
            best = min(best, time.process_time() - cpu)
            store.stop()
        out[f"{stage}_cpu_us_per_attempt"] = round(1e6 * best / n, 1)
    out["budget_us_per_attempt_for_10k_per_s"] = 100.0
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.1, help="store polling interval, s")
    parser.add_argument("--pipeline", type=int, default=0, help="only the in-process breakdown")
    parser.add_argument("--monitor-only", action="store_true", help="not `sentinel run`")
    parser.add_argument("--keep", action="store_true", help="keep the state dir and logs")
    args = parser.parse_args()
    if args.pipeline:
        print(json.dumps(pipeline(args.pipeline), indent=2))
        return
    if args.attempts > 2 * 50_000:
        parser.error("at most 100,000 attempts (50,000 ports per family)")
    work = Path(tempfile.mkdtemp(prefix="sentinel-headroom-"))
    state = work / "state"
    os.environ["SENTINEL_STATE_DIR"] = str(state)
    policy = work / "policy" / "policy.yaml"  # alone in its folder: the policy watcher's
    policy.parent.mkdir()  # inotify must not wake for every line of the log beside it
    policy.write_text(POLICY)
    topo = Topology().build()
    sentinel = None
    try:
        sentinel = (Standalone if args.monitor_only else Sentinel)(topo, policy, state)
        time.sleep(1)
        cpu0 = cpu_seconds(sentinel.proc.pid)
        figures = {"process": "monitor only" if args.monitor_only else "sentinel run"}
        figures.update(run(topo, state, work, args))
        cpu = cpu_seconds(sentinel.proc.pid) - cpu0
        figures["daemon_cpu_seconds"] = round(cpu, 2)
        figures["daemon_cpu_us_per_attempt"] = round(1e6 * cpu / max(1, figures["attempted"]), 1)
        figures["load_average"] = os.getloadavg()
        print(json.dumps(figures, indent=2))
    finally:
        if sentinel:
            sentinel.stop()
        topo.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(topo: Topology, state: Path, work: Path, args) -> dict:
    db = state / "events.db"
    times = work / "sent.txt"
    cmd = ["ip", "netns", "exec", topo.ns("app"), PYTHON, "-c", FLOOD]
    sender = subprocess.Popen(
        [*cmd, str(args.attempts), str(args.seconds), str(times)],
        stdout=subprocess.PIPE,
        text=True,
    )
    sent_cache: dict = {}

    def sent() -> dict:
        if not sent_cache and times.exists() and sender.poll() is not None:
            for row in times.read_text().splitlines():
                fam, port, t = row.split()
                sent_cache[(int(fam), int(port))] = float(t)
        return sent_cache

    seen = poll_store(db, sent, sender, args)
    send_seconds = float(sender.communicate(timeout=args.seconds * 3 + 30)[0])
    sent_at = sent()
    ts = stored_ts(db)
    got = {k: v for k, v in ts.items() if k in sent_at}
    to_event = [got[k] - t for k, t in sent_at.items() if k in got]
    to_query = [seen[k] - t for k, t in sent_at.items() if k in seen]
    interval = 5.0
    time.sleep(interval + 1)  # a heartbeat after the flood carries the monitor's final counts
    done = topo.sentinel("report", "--last", "10m", "--format", "json")
    report = json.loads(done.stdout)
    stats = last_monitor_stats(db)
    missing = len(sent_at) - len(got)
    return {
        "attempted": len(sent_at),
        "send_seconds": round(send_seconds, 2),
        "recorded": len(got),
        "recorded_ratio": round(len(got) / max(1, len(sent_at)), 6),
        "missing": missing,
        "unaccounted_packets": report.get("unaccounted_packets"),
        "shed": {
            "kernel_socket_lost_seq": report["monitor_loss"]["lost"],
            "kernel_socket_enobufs": report["monitor_loss"]["overruns"],
            "malformed": report["monitor_loss"]["malformed"],
            "store_shed_by_layer": report["shed_by_layer"],
        },
        "coverage": report["coverage"],
        "coverage_problems": report["coverage_detail"]["problems"],
        "window_counters": report["coverage_detail"]["window_counters"],
        "monitor_stats": stats,
        "latency_event_p50_ms": round(percentile(to_event, 50) * 1000, 1),
        "latency_event_p99_ms": round(percentile(to_event, 99) * 1000, 1),
        "latency_event_max_ms": round(max(to_event, default=float("nan")) * 1000, 1),
        "latency_queryable_p50_ms": round(percentile(to_query, 50) * 1000, 1),
        "latency_queryable_p99_ms": round(percentile(to_query, 99) * 1000, 1),
        "poll_resolution_ms": args.poll * 1000,
        "goal": GOAL,
        "met": (
            missing == 0
            and not report.get("unaccounted_packets")
            and percentile(to_event, 99) < 1.0
        ),
    }


if __name__ == "__main__":
    main()
