"""`sentinel run`: apply, pin DNS, hot-reload, tamper-check, and start the other services.

One `Daemon` owns the kernel: every change (start-up apply, pin update, reload, tamper repair)
happens under one lock, against one `expected` ruleset. Other parts (NFLOG monitor, event
store, alert dispatcher, guard receiver) plug in through `run.services.SERVICES`: name ->
factory(context) returning an object with start()/stop(); they receive events by
`context.add_sink(fn)` and report them with `context.emit(event)`.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sentinel.atomic import write_atomic
from sentinel.enforce import netfilter
from sentinel.enforce.netdev import read_link
from sentinel.enforce.render import Ruleset, held_after_pin_change, held_entries, render_rules
from sentinel.errors import BadInput, SentinelError
from sentinel.evidence import metrics
from sentinel.log import correlation, get_logger
from sentinel.policy import safety
from sentinel.policy.decide import prepare_ruleset
from sentinel.policy.load import IPAddress, Policy, PolicyError, load_policy
from sentinel.policy.watch import PolicyWatcher
from sentinel.resolver.pins import PinManager, Upstream, parse_upstream
from sentinel.resolver.server import PinningResolver
from sentinel.run.orphan import EXIT_ORPHANED, OrphanWatch
from sentinel.run.watchdog import Watchdog
from sentinel.store import kinds
from sentinel.store.events import Event
from sentinel.store.kinds import QUIET_KINDS
from sentinel.store.state import APPLIED, read_json, record_applied, write_json

DAEMON_STATE = "daemon.json"
REPAIR_RETRY = 2.0  # seconds between repair attempts while a tamper repair keeps failing
EARLY_SERVICES = ("store", "monitor")  # started before the first apply (see run)
log = get_logger("daemon")


class Service(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Context:
    """What a plugged-in service gets: the live policy, the pins, and the event bus."""

    policy: Policy
    policy_path: Path
    backend: str
    pins: PinManager | None = None
    sinks: list[Callable[[Event], None]] = field(default_factory=list)
    reload_hooks: list[Callable[[Policy], None]] = field(default_factory=list)
    # called after every apply and pin change, before the DNS answer that caused it is released
    applied_hooks: list[Callable[[Policy, dict], None]] = field(default_factory=list)
    services: dict[str, Any] = field(default_factory=dict)  # name -> started service

    def add_sink(self, sink: Callable[[Event], None]) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        """Fan an event out to every sink; a failing sink never stops the others."""
        if not kinds.known(event.kind):  # sentinel.store.kinds is the one table of kinds
            log.error("unregistered_event_kind", kind=event.kind, layer=event.layer)
        with correlation(event.id):
            for sink in list(self.sinks):
                try:
                    sink(event)
                except Exception:  # noqa: BLE001
                    log.exception("sink_failed", sink=getattr(sink, "__qualname__", str(sink)))


def log_sink(event: Event) -> None:
    fields = event.to_dict()
    fields.pop("id")
    log.info("event", event_id=event.id, **fields)


class Daemon:
    def __init__(
        self,
        policy_path: Path,
        backend: str = netfilter.DEFAULT_BACKEND,
        teardown_on_exit: bool = False,
        services: dict[str, Callable[[Context], Service]] | None = None,  # run.services.SERVICES
        ready_file: Path | None = None,
    ) -> None:
        self.ready_file = Path(ready_file) if ready_file else None
        self.ready = False
        self.early: list[Event] = []
        self.policy_path = Path(policy_path)
        self.backend, self.teardown_on_exit = backend, teardown_on_exit
        self.factories = services or {}
        self.stopping = threading.Event()
        self.kernel = threading.RLock()  # every kernel change and check happens under it
        self.expected: Ruleset | None = None
        self.resolver: PinningResolver | None = None
        self.watcher: PolicyWatcher | None = None
        self.services: list[tuple[str, Service]] = []
        self.threads: list[threading.Thread] = []
        self.auto_upstream: tuple[str, int] | None = None
        self.repair_failures = 0  # failed tamper repairs in a row
        self.watchdog: Watchdog | None = None

    @staticmethod
    def log_sink(event: Event) -> None:
        """Log every event except the periodic bookkeeping ones (those are only stored)."""
        if event.kind not in QUIET_KINDS and event.last_ts is None:
            log_sink(event)

    # --- start-up -------------------------------------------------------------------
    def run(self) -> int:
        netfilter.ensure_not_root_netns()
        policy = load_policy(self.policy_path)
        self._check_ready_file()
        from sentinel import redact
        from sentinel.store.state import state_dir

        redact.use_key(state_dir(), create=True)  # user-id pseudonyms stable across restarts
        self.ctx = Context(policy, self.policy_path, self.backend, sinks=[self.log_sink])
        upstream = self._upstream(policy)
        for note in safety.run_warnings(policy, upstream.address):
            log.warning("policy_warning", warning=note)
        self.ctx.pins = PinManager(
            policy.dns, upstream, policy.hostnames, self._emit_or_hold, self._pins_changed
        )
        try:  # a restart keeps what is applied for names that fail now, until the grace
            adopted = self.ctx.pins.adopt(read_json(APPLIED))
        except SentinelError as exc:
            adopted = []
            log.warning("applied_state_unreadable", error=exc.message)
        self.ctx.pins.refresh_all(batch=True)  # marked sockets: with or without our rules
        self.ctx.pins.expire()
        for name in adopted:
            pin = self.ctx.pins.pin(name)
            if pin is not None and pin.failing and pin.addresses:
                kept = [str(a) for a in pin.addresses]
                log.warning("kept_applied_pins", name=name, addresses=kept, error=pin.error)
        early: Exception | None = None
        try:
            # the store and the monitor first: the first packets the new rules log (say, of a
            # flow opened before we started) are read, not only counted by the kernel
            self._start_services(EARLY_SERVICES)
        except Exception as exc:  # noqa: BLE001 - raised below, once the deny is in force
            early = exc
        try:
            self._apply(policy, reason="start")  # fail closed even if they did not start
        except BaseException:
            self._stop_services()
            raise
        if early is not None:
            self._stop_services()
            raise early
        self._install_signals()
        try:
            self._start_parts(policy, upstream)
            for event in self.early:  # readings taken before the store was up
                self.ctx.emit(event)
            self.watchdog = Watchdog(self).start()  # supervises every part started above
            self._signal_ready()
            log.info(
                "running",
                policy=str(self.policy_path),
                backend=self.backend,
                upstream=f"{upstream.address}:{upstream.port}",
                pid=os.getpid(),
            )
            return self._loop()
        finally:
            self._shutdown()

    def _upstream(self, policy: Policy) -> Upstream:
        # `auto` means resolv.conf *at start-up*: a reload must not pick up a resolv.conf
        # that was pointed elsewhere (at ourselves, say) after we started
        if policy.dns.upstream == "auto":
            if self.auto_upstream is None:
                self.auto_upstream = parse_upstream("auto")
            address, port = self.auto_upstream
        else:
            address, port = parse_upstream(policy.dns.upstream)
        return Upstream(address, port, mark=policy.mark)

    def _start_parts(self, policy: Policy, upstream: Upstream) -> None:
        self._start_resolver(policy, upstream)
        self._thread(self._refresher, "pin-refresher")
        self.watcher = PolicyWatcher(self.policy_path, self.reload)
        self.watcher.start()
        self._start_services(tuple(self.factories))

    def _start_services(self, names: tuple[str, ...]) -> None:
        for name in names:
            factory = self.factories.get(name)
            if factory is None or name in self.ctx.services:
                continue
            service = factory(self.ctx)
            service.start()
            self.services.append((name, service))
            self.ctx.services[name] = service
            log.info("service_started", service=name)

    def _stop_services(self) -> None:
        for name, service in reversed(self.services):
            try:
                service.stop()
            except Exception:  # noqa: BLE001
                log.exception("service_stop_failed", service=name)

    def _thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stopping.set())

    # --- steady state ---------------------------------------------------------------
    def _loop(self) -> int:
        watch = OrphanWatch() if self.ready_file is not None else None
        while not self.stopping.wait(self._next_check()):
            if watch is not None and watch.orphaned():
                log.error(
                    "app_namespace_gone",
                    action="exiting so the orchestrator restarts the sentinel in the app's "
                    "current namespace (run/orphan.py)",
                )
                return EXIT_ORPHANED
            try:
                self.tamper_check()
            except Exception:  # noqa: BLE001 - the checker must outlive one bad round
                log.exception("tamper_check_failed")
                metrics.observe_error("apply")
            self._coverage_check()
        return 0

    def _next_check(self) -> float:
        """The tamper interval; while a repair keeps failing, retry at least every 2 s."""
        interval = self.ctx.policy.monitor.tamper_interval
        return min(interval, REPAIR_RETRY) if self.repair_failures else interval

    def _coverage_check(self) -> None:
        """`sentinel_unaccounted_packets`: kernel NFLOG packets the store does not hold."""
        if "store" not in self.ctx.services:
            return
        from sentinel.evidence.coverage import unaccounted_packets

        try:
            metrics.set_unaccounted(unaccounted_packets(self.backend))
        except Exception:  # noqa: BLE001 - bookkeeping must never stop the loop
            log.exception("coverage_check_failed")

    def _refresher(self) -> None:
        assert self.ctx.pins is not None
        while not self.stopping.is_set():
            try:
                delay = self.ctx.pins.tick()
            except Exception:  # noqa: BLE001 - the refresher must outlive one bad round
                log.exception("pin_refresh_failed")
                delay = 1.0
            self.stopping.wait(min(delay, 1.0))

    def _emit_or_hold(self, event: Event) -> None:
        """The first pin resolutions happen before the store is up: they wait in `early`
        (the store keeps them, e.g. the TTL `sentinel explain` shows)."""
        if self.ctx.services:
            self.ctx.emit(event)
        else:
            self.early.append(event)

    def _pins_changed(self, pins: dict[str, list[IPAddress]]) -> None:
        """Called by the pin manager before an answer is released: sets only, no iptables."""
        with self.kernel:
            if self.expected is None:
                return  # start-up: the first full apply follows
            new = render_rules(self.ctx.policy, pins, self.expected.link)
            # addresses a move retired stay allowed for the flows already open to them
            new = render_rules(
                self.ctx.policy, pins, self.expected.link, held_after_pin_change(self.expected, new)
            )
            try:
                netfilter.update_sets(self.expected, new)
            except SentinelError as exc:
                # the kernel now differs from `new`: the next tamper check re-applies it whole
                log.error("pin_update_failed", error=exc.message)
                self.expected = new
                raise
            self.expected = new
            if self.resolver:
                self.resolver.invalidate()
        self._record(self.ctx.policy, new, pins, [], full=False)

    def tamper_check(self) -> bool:
        """Compare the kernel with the expected ruleset; on drift re-apply, re-check, report.

        A repair that fails (the apply raises, or the kernel still differs when read again)
        is a `tamper_unrepaired` P1 on the first failure of a streak; the check is retried
        every REPAIR_RETRY seconds and the eventual repair is a `tamper` event that says how
        many attempts it took."""
        with self.kernel:
            if self.expected is None:
                return False
            link = read_link()
            if link != self.expected.link:  # an interface or address came or went
                held = held_entries(self.expected)
                pins = self.ctx.pins.pins()  # type: ignore[union-attr]
                self.expected = render_rules(self.ctx.policy, pins, link, held)
            want = self.expected.sha256()
            try:
                state = netfilter.read_state(self.backend)
            except SentinelError as exc:
                return self._repair_failed(want, None, f"cannot read the kernel: {exc.message}", {})
            found = state.sha256()
            if found == want:
                metrics.set_rules_in_sync(True)
                if self.repair_failures:  # put right from outside: still say it was repaired
                    self._repaired(want, found, {"repaired_by": "outside"})
                return False
            metrics.set_rules_in_sync(False)
            detail = _drift(self.expected, state)
            self._snapshot_counters()
            error = None
            try:
                applied = netfilter.apply(self.expected, self.backend)
            except SentinelError as exc:
                applied, error = None, exc.message
            try:
                after: str | None = netfilter.read_state(self.backend).sha256()
            except SentinelError as exc:
                after, error = None, error or f"cannot read the kernel: {exc.message}"
            if after != want:
                return self._repair_failed(
                    want, found, error or "the kernel still differs after re-applying", detail
                )
            metrics.set_rules_in_sync(True)
            if applied is not None:
                self._record(
                    self.ctx.policy,
                    self.expected,
                    self.ctx.pins.pins(),  # type: ignore
                    applied.created_tables,
                    full=applied.rules_replaced,
                )
        self._repaired(want, found, detail)
        return True

    def _repaired(self, want: str, found: str, detail: dict[str, Any]) -> None:
        failures, self.repair_failures = self.repair_failures, 0
        detail = {"expected": want, "found": found, "repaired": True, **detail}
        if failures:
            detail["failed_attempts"] = failures
        self.ctx.emit(Event(layer="tamper", kind="tamper", verdict="blocked", detail=detail))

    def _repair_failed(
        self, want: str, found: str | None, error: str, detail: dict[str, Any]
    ) -> bool:
        metrics.set_rules_in_sync(False)
        metrics.observe_error("apply")
        self.repair_failures += 1
        log.error("tamper_repair_failed", error=error, attempt=self.repair_failures)
        if self.repair_failures == 1:  # once per streak: the retries are counted, not paged
            event = Event(
                layer="tamper",
                kind="tamper_unrepaired",
                verdict="blocked",
                detail={
                    "expected": want,
                    "found": found,
                    "repaired": False,
                    "error": error,
                    "message": error,
                    "retry_every_s": REPAIR_RETRY,
                    **detail,
                },
            )
            self.ctx.emit(event)
        return True

    # --- reload ---------------------------------------------------------------------
    def reload(self) -> None:
        """The policy file changed: validate, then swap rules in one commit, or keep the old."""
        assert self.ctx.pins is not None
        try:
            policy = load_policy(self.policy_path)
            if policy.sha256 == self.ctx.policy.sha256:
                return
            if policy.nflog_group != self.ctx.policy.nflog_group:
                # the monitor holds the old group's socket: new rules logging elsewhere would
                # make every attempt invisible. Refused whole; a restart takes the new group.
                raise SentinelError(
                    f"nflog_group cannot change on reload ({self.ctx.policy.nflog_group} -> "
                    f"{policy.nflog_group}): the monitor is bound to group "
                    f"{self.ctx.policy.nflog_group}; restart `sentinel run` to change it"
                )
            self._apply(policy, reason="reload")
        except (PolicyError, SentinelError) as exc:
            self.ctx.emit(
                Event(
                    layer="sentinel",
                    kind="reload_rejected",
                    verdict="info",
                    detail={
                        "error": exc.message,
                        "policy": str(self.policy_path),
                        "kept": self.ctx.policy.sha256,
                    },
                )
            )
            return
        for note in policy.warnings:  # refusals never get here: they are reload_rejected
            log.warning("policy_warning", warning=note)
        old = self.ctx.pins.names()
        self.ctx.pins.set_names(policy.hostnames)
        self.ctx.pins.refresh_all(self.ctx.pins.names() - old)  # each new pin pushes sets
        self._retune(policy)
        for hook in self.ctx.reload_hooks:
            hook(policy)
        self.ctx.emit(
            Event(
                layer="sentinel",
                kind="policy_reloaded",
                verdict="info",
                detail={"policy_sha256": policy.sha256, "mode": policy.mode},
            )
        )

    def _retune(self, policy: Policy) -> None:
        """DNS settings of a reloaded policy: upstream, TTLs, refusal code, mode, port."""
        assert self.ctx.pins is not None and self.resolver is not None
        upstream = self._upstream(policy)
        self.ctx.pins.settings, self.ctx.pins.upstream = policy.dns, upstream
        if policy.dns.listen_port != self.resolver.port:
            self.resolver.stop()
            self._start_resolver(policy, upstream)
        else:
            self.resolver.mode, self.resolver.upstream = policy.mode, upstream
            self.resolver.refuse_rcode = 3 if policy.dns.refuse_with == "nxdomain" else 5
            self.resolver.folder.window = policy.monitor.fold_window
            self.resolver.invalidate()

    def _start_resolver(self, policy: Policy, upstream: Upstream) -> None:
        assert self.ctx.pins is not None
        self.resolver = PinningResolver(
            self.ctx.pins,
            self.ctx.emit,
            policy.dns.listen_port,
            policy.dns.refuse_with,
            policy.mode,
            upstream,
            fold_window=policy.monitor.fold_window,
        )
        self.resolver.start()
        metrics.watch_resolver(self.resolver)

    def _apply(self, policy: Policy, reason: str) -> None:
        """Full apply (one atomic commit per table and family), then state."""
        assert self.ctx.pins is not None
        with self.kernel:
            pins = self.ctx.pins.pins()
            ruleset = prepare_ruleset(policy, pins, pending_ok=True, link=read_link())
            self._snapshot_counters()
            started = time.perf_counter()
            try:
                state = netfilter.apply(ruleset, self.backend)
                if state.sha256() != ruleset.sha256():
                    raise SentinelError("applied, but the kernel does not hold the ruleset")
            except SentinelError:
                metrics.observe_apply(time.perf_counter() - started, ok=False)
                raise
            metrics.observe_apply(time.perf_counter() - started, ok=True)
            metrics.set_rules_in_sync(True)
            self.expected, self.ctx.policy = ruleset, policy
        self._record(policy, ruleset, pins, state.created_tables, full=state.rules_replaced)
        log.info(
            "applied",
            reason=reason,
            ruleset_sha256=ruleset.sha256(),
            mode=policy.mode,
            pins={k: [str(a) for a in v] for k, v in pins.items()},
        )

    def _snapshot_counters(self) -> None:
        """A full apply zeroes the kernel counters: read them first so no netflow, and no
        attempt made while no sentinel was running, is lost. At start-up the store is not up
        yet, so the reading waits in `self.early` and is emitted once it is."""
        if self.ready and "monitor" not in self.ctx.services:
            return
        from sentinel.enforce.snapshot import kernel_snapshot

        try:
            if not netfilter.read_state(self.backend).present:
                return  # nothing of ours in the kernel: nothing to lose
            detail = kernel_snapshot(self.backend)
        except Exception:  # noqa: BLE001 - bookkeeping must never stop an apply
            log.exception("counter_snapshot_failed")
            return
        event = Event(layer="sentinel", kind="kernel_counters", verdict="info", detail=detail)
        if self.ctx.services:
            self.ctx.emit(event)
        else:
            self.early.append(event)

    def _record(
        self, policy: Policy, ruleset: Ruleset, pins: dict, created: list[str], full: bool = True
    ) -> None:
        try:
            valid = self.ctx.pins.valid_until() if self.ctx.pins else None
            record_applied(
                policy, ruleset, self.backend, pins, created, full=full, pins_valid_until=valid
            )
        except SentinelError as exc:
            # the kernel already holds the new rules: a full or read-only state dir must not
            # turn that into a "rejected" reload; `status` shows the stale state as drift
            log.error("state_write_failed", error=exc.message)
        for hook in self.ctx.applied_hooks:
            try:
                hook(policy, pins)
            except Exception:  # noqa: BLE001 - one hook must not stop the others
                log.exception("applied_hook_failed", hook=getattr(hook, "__qualname__", ""))
        self._write_daemon_state(policy)

    def _write_daemon_state(self, policy: Policy) -> None:
        state = {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "policy": str(self.policy_path),
            "resolver_port": policy.dns.listen_port,
            "ready": self.ready,
            "services": sorted(self.ctx.services),
        }
        try:
            write_json(DAEMON_STATE, state)
        except SentinelError as exc:  # bookkeeping only: the daemon goes on
            log.error("state_write_failed", error=exc.message)

    def _check_ready_file(self) -> None:
        """Before anything is applied: a stale ready file (a sentinel that was killed) goes,
        and one that cannot be written is bad input, not a traceback after the apply."""
        if self.ready_file is None:
            return
        probe = self.ready_file.with_name(self.ready_file.name + ".tmp")
        try:
            self.ready_file.unlink(missing_ok=True)
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise BadInput(f"--ready-file {self.ready_file}: {exc.strerror or exc}") from None

    def _signal_ready(self) -> None:
        """Everything is up (rules, resolver, monitor, guard receiver, alerts): say so, in
        daemon.json and, if asked, in a ready file holding this network namespace's id (the
        compose gate opens the app only for its own namespace)."""
        self.ready = True
        self._write_daemon_state(self.ctx.policy)
        if self.ready_file is not None:
            try:
                write_atomic(self.ready_file, os.readlink("/proc/self/ns/net") + "\n", mode=0o644)
            except OSError as exc:  # checked at start; gone since: the gate stays shut
                raise SentinelError(f"--ready-file {self.ready_file}: {exc}") from None
        log.info("ready", ready_file=str(self.ready_file) if self.ready_file else None)

    # --- shutdown -------------------------------------------------------------------
    def _shutdown(self) -> None:
        self.stopping.set()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.ready_file is not None:  # an app (re)starting now must wait for a new sentinel
            self.ready_file.unlink(missing_ok=True)
        self._stop_services()
        if self.watcher:
            self.watcher.stop()
        if self.resolver:
            self.resolver.stop()
        for thread in self.threads:
            thread.join(timeout=5)
        if self.teardown_on_exit:
            created = (read_json(APPLIED) or {}).get("created_tables", [])
            netfilter.teardown(self.backend, created)
            write_json(APPLIED, {"torn_down_at": time.time(), "created_tables": []})
            log.info("stopped", rules="removed (--teardown-on-exit)")
        else:
            log.info("stopped", rules="left in force (deny stays)")


def _drift(expected: Ruleset, state: Any) -> dict[str, Any]:
    """A short, human-readable account of what differs (for the tamper event)."""
    out: dict[str, Any] = {}
    for family in (4, 6):
        want = set(expected.save_text(family).splitlines())
        have = set(state.text.get(family, "").splitlines())
        if want != have:
            out[f"v{family}_missing"] = sorted(want - have)[:20]
            out[f"v{family}_extra"] = sorted(have - want)[:20]
    if expected.netdev != getattr(state, "netdev", ""):
        want, have = set(expected.netdev.splitlines()), set(state.netdev.splitlines())
        out["netdev_missing"], out["netdev_extra"] = (
            sorted(want - have)[:20],
            sorted(have - want)[:20],
        )
        out["link"] = {"devices": list(expected.link.devices)}
    want_sets = {s.name: set(s.entries) for s in expected.sets}
    have_sets = {s.name: set(s.entries) for s in state.sets}
    for name in sorted(set(want_sets) | set(have_sets)):
        missing = want_sets.get(name, set()) - have_sets.get(name, set())
        extra = have_sets.get(name, set()) - want_sets.get(name, set())
        if missing or extra or name not in have_sets:
            out[f"{name}"] = {
                "missing": sorted(missing)[:20],
                "extra": sorted(extra)[:20],
                "present": name in have_sets,
            }
    return out
