"""`sentinel run`: apply, pin DNS, hot-reload, tamper-check, and start the other services.

One `Daemon` owns the kernel: every change (start-up apply, pin update, reload, tamper repair)
happens under one lock, against one `expected` ruleset, through run.applying (the sequence
`sentinel apply` uses too). Other parts (NFLOG monitor, event store, alert dispatcher, guard
receiver) plug in through `run.services.SERVICES` (see run.context). The jobs around the
kernel live beside this file: run.tamper (check and repair), run.reload, run.counters,
run.readiness (daemon.json and the ready file).
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sentinel.enforce import netfilter
from sentinel.enforce.netdev import read_link
from sentinel.enforce.render import Ruleset
from sentinel.errors import SentinelError
from sentinel.evidence import metrics
from sentinel.log import get_logger
from sentinel.policy import safety
from sentinel.policy.load import IPAddress, Policy, load_policy
from sentinel.policy.watch import PolicyWatcher
from sentinel.resolver.pins import PinManager, Upstream, parse_upstream
from sentinel.resolver.server import PinningResolver
from sentinel.run import applying, readiness
from sentinel.run import reload as reloading
from sentinel.run.context import Context, Service, quiet_log_sink
from sentinel.run.counters import coverage_check, snapshot_counters
from sentinel.run.orphan import EXIT_ORPHANED, OrphanWatch
from sentinel.run.tamper import TamperCheck
from sentinel.run.watchdog import Watchdog
from sentinel.store.events import Event
from sentinel.store.state import APPLIED, read_json, write_json

__all__ = ["Context", "Daemon", "Service"]

EARLY_SERVICES = ("store", "monitor")  # started before the first apply (see run)
log = get_logger("daemon")


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
        self.tamper = TamperCheck(self)
        self.watchdog: Watchdog | None = None

    # --- start-up -------------------------------------------------------------------
    def run(self) -> int:
        netfilter.ensure_not_root_netns()
        policy = load_policy(self.policy_path)
        readiness.check_ready_file(self.ready_file)
        from sentinel import redact
        from sentinel.store.state import state_dir

        redact.use_key(state_dir(), create=True)  # user-id pseudonyms stable across restarts
        self.ctx = Context(policy, self.policy_path, self.backend, sinks=[quiet_log_sink])
        upstream = self.upstream(policy)
        for note in safety.run_warnings(policy, upstream.address):
            log.warning("policy_warning", warning=note)
        self._pin_first(policy, upstream)
        self._first_apply(policy)
        self._install_signals()
        try:
            self._start_parts(policy, upstream)
            for event in self.early:  # readings taken before the store was up
                self.ctx.emit(event)
            self.watchdog = Watchdog(self).start()  # supervises every part started above
            gc.freeze()  # what start-up made lives as long as we do: never rescanned (issue 17)
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

    def _pin_first(self, policy: Policy, upstream: Upstream) -> None:
        """Resolve every allowlisted name before the first apply (marked sockets: with or
        without our rules); a restart keeps what is applied for names that fail now, until
        the grace."""
        pins = PinManager(
            policy.dns, upstream, policy.hostnames, self._emit_or_hold, self._pins_changed
        )
        self.ctx.pins = pins
        try:
            adopted = pins.adopt(read_json(APPLIED))
        except SentinelError as exc:
            adopted = []
            log.warning("applied_state_unreadable", error=exc.message)
        pins.refresh_all(batch=True)
        pins.expire()
        for name in adopted:
            pin = pins.pin(name)
            if pin is not None and pin.failing and pin.addresses:
                kept = [str(a) for a in pin.addresses]
                log.warning("kept_applied_pins", name=name, addresses=kept, error=pin.error)

    def _first_apply(self, policy: Policy) -> None:
        """The store and the monitor first: the first packets the new rules log (say, of a
        flow opened before we started) are read, not only counted by the kernel. The deny is
        applied even if they did not start (fail closed); their error is raised after it."""
        early: Exception | None = None
        try:
            self._start_services(EARLY_SERVICES)
        except Exception as exc:  # noqa: BLE001 - raised below, once the deny is in force
            early = exc
        try:
            self.apply(policy, reason="start")
        except BaseException:
            self._stop_services()
            raise
        if early is not None:
            self._stop_services()
            raise early

    def upstream(self, policy: Policy) -> Upstream:
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
        self.start_resolver(policy, upstream)
        self._thread(self._refresher, "pin-refresher")
        self.watcher = PolicyWatcher(self.policy_path, self.reload)
        self.watcher.start()
        self._start_services(tuple(self.factories))

    def start_resolver(self, policy: Policy, upstream: Upstream) -> None:
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

    def _signal_ready(self) -> None:
        """Everything is up (rules, resolver, monitor, guard receiver, alerts): say so, in
        daemon.json and, if asked, in the ready file."""
        self.ready = True
        self._write_daemon_state(self.ctx.policy)
        readiness.write_ready_file(self.ready_file)
        log.info("ready", ready_file=str(self.ready_file) if self.ready_file else None)

    # --- steady state ---------------------------------------------------------------
    def _loop(self) -> int:
        watch = OrphanWatch() if self.ready_file is not None else None
        while not self.stopping.wait(self.tamper.interval(self.ctx.policy.monitor.tamper_interval)):
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
            if "store" in self.ctx.services:
                coverage_check(self.backend)
        return 0

    def tamper_check(self) -> bool:
        """Compare the kernel with the expected ruleset; on drift re-apply (run.tamper)."""
        return self.tamper.check()

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

    def reload(self) -> None:
        """The policy file changed: validate, then swap rules in one commit, or keep the old."""
        reloading.reload(self)

    # --- the kernel: every change goes through run.applying -----------------------------
    def _around(self) -> applying.Around:
        """The daemon's additions to the apply sequence: counters read before a full apply
        and its metrics, a state write that fails only logged, the applied hooks, daemon.json."""
        return applying.Around(
            snapshot=self.snapshot_counters,
            timed=metrics.observe_apply,
            state_failed=_state_write_failed,
            applied=self._applied,
        )

    def apply(self, policy: Policy, reason: str) -> None:
        """Full apply (one atomic commit per table and family), then state."""
        assert self.ctx.pins is not None
        with self.kernel:
            pins = self.ctx.pins.pins()
            done = applying.apply_policy(
                policy,
                pins,
                self.backend,
                read_link(),
                pending_ok=True,
                valid_until=self.ctx.pins.valid_until(),
                around=self._around(),
            )
            metrics.set_rules_in_sync(True)
            self.expected, self.ctx.policy = done.ruleset, policy
        log.info(
            "applied",
            reason=reason,
            ruleset_sha256=done.ruleset.sha256(),
            mode=policy.mode,
            pins={k: [str(a) for a in v] for k, v in pins.items()},
        )

    def _pins_changed(self, pins: dict[str, list[IPAddress]]) -> None:
        """Called by the pin manager before an answer is released: sets only, no iptables."""
        with self.kernel:
            if self.expected is None:
                return  # start-up: the first full apply follows
            old = self.expected
            # whether the sets follow or not: if they fail, the kernel differs from the new
            # ruleset and the next tamper check re-applies it whole
            self.expected = applying.pin_ruleset(self.ctx.policy, pins, old)
            try:
                applying.apply_policy(
                    self.ctx.policy,
                    pins,
                    self.backend,
                    old.link,
                    ruleset=self.expected,
                    previous=old,
                    valid_until=self.ctx.pins.valid_until() if self.ctx.pins else None,
                    around=self._around(),
                )
            except SentinelError as exc:
                log.error("pin_update_failed", error=exc.message)
                raise
            if self.resolver:
                self.resolver.invalidate()

    def record(
        self, ruleset: Ruleset, created: list[str], full: bool, reset_at: float | None = None
    ) -> None:
        """State after a tamper repair re-applied `ruleset` (run.tamper)."""
        pins = self.ctx.pins.pins() if self.ctx.pins else {}
        valid = self.ctx.pins.valid_until() if self.ctx.pins else None
        applying.record(
            self.ctx.policy,
            ruleset,
            self.backend,
            pins,
            created,
            full,
            valid,
            self._around(),
            reset_at,
        )

    def snapshot_counters(self) -> None:
        """Before a full apply zeroes them. At start-up the store is not up yet, so the
        reading waits in `self.early` and is emitted once it is."""
        if self.ready and "monitor" not in self.ctx.services:
            return
        snapshot_counters(self.backend, self._emit_or_hold)

    def _applied(self, policy: Policy, pins: dict) -> None:
        self.ctx.run_applied_hooks(policy, pins)  # the guard's allowlist among them
        self._write_daemon_state(policy)

    def _write_daemon_state(self, policy: Policy) -> None:
        readiness.write_daemon_state(self.policy_path, policy, self.ready, list(self.ctx.services))

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


def _state_write_failed(exc: SentinelError) -> None:
    # the kernel already holds the new rules: a full or read-only state dir must not turn that
    # into a "rejected" reload; `status` shows the stale state as drift
    log.error("state_write_failed", error=exc.message)
