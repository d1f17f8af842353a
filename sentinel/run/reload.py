"""Hot reload for `sentinel run`: the policy file changed, so validate it, then swap the rules
in one commit, or keep the old policy and say why (`reload_rejected`).

After a successful swap the pins follow the new names, the resolver takes the new DNS settings,
and every reload hook (e.g. the alert router) sees the new policy.
"""

from __future__ import annotations

from typing import Any

from sentinel.errors import SentinelError
from sentinel.log import get_logger
from sentinel.policy.load import Policy, PolicyError, load_policy
from sentinel.store.events import Event

log = get_logger("daemon")


def reload(daemon: Any) -> None:
    """Validate, then swap rules in one commit, or keep the old."""
    ctx = daemon.ctx
    assert ctx.pins is not None
    try:
        policy = load_policy(daemon.policy_path)
        if policy.sha256 == ctx.policy.sha256:
            return
        check_reloadable(ctx.policy, policy)
        daemon.apply(policy, reason="reload")
    except (PolicyError, SentinelError) as exc:
        ctx.emit(_rejected(exc.message, str(daemon.policy_path), ctx.policy.sha256))
        return
    for note in policy.warnings:  # refusals never get here: they are reload_rejected
        log.warning("policy_warning", warning=note)
    old = ctx.pins.names()
    ctx.pins.set_names(policy.hostnames)
    ctx.pins.refresh_all(ctx.pins.names() - old)  # each new pin pushes sets
    retune(daemon, policy)
    for hook in ctx.reload_hooks:
        hook(policy)
    detail = {"policy_sha256": policy.sha256, "mode": policy.mode}
    ctx.emit(Event(layer="sentinel", kind="policy_reloaded", verdict="info", detail=detail))


def check_reloadable(old: Policy, new: Policy) -> None:
    """The monitor holds the old group's socket: new rules logging elsewhere would make every
    attempt invisible. Refused whole; a restart takes the new group."""
    if new.nflog_group != old.nflog_group:
        raise SentinelError(
            f"nflog_group cannot change on reload ({old.nflog_group} -> "
            f"{new.nflog_group}): the monitor is bound to group "
            f"{old.nflog_group}; restart `sentinel run` to change it"
        )


def _rejected(error: str, path: str, kept: str) -> Event:
    detail = {"error": error, "policy": path, "kept": kept}
    return Event(layer="sentinel", kind="reload_rejected", verdict="info", detail=detail)


def retune(daemon: Any, policy: Policy) -> None:
    """DNS settings of a reloaded policy: upstream, TTLs, refusal code, mode, port."""
    ctx, resolver = daemon.ctx, daemon.resolver
    assert ctx.pins is not None and resolver is not None
    upstream = daemon.upstream(policy)
    ctx.pins.settings, ctx.pins.upstream = policy.dns, upstream
    if policy.dns.listen_port != resolver.port:
        resolver.stop()
        daemon.start_resolver(policy, upstream)
    else:
        resolver.mode, resolver.upstream = policy.mode, upstream
        resolver.refuse_rcode = 3 if policy.dns.refuse_with == "nxdomain" else 5
        resolver.folder.window = policy.monitor.fold_window
        resolver.invalidate()
