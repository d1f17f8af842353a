"""The same policy as a Kubernetes NetworkPolicy or a CiliumNetworkPolicy (pure: Policy -> dict).

How allowlist entries map:
- an in-cluster service name (a bare `postgres`, or `postgres.db.svc[.cluster.local]`) ->
  a pod selector on `<label_key>: <service>` (plus its namespace when the name carries one);
- any other dotted name (`api.example.com`) -> Cilium `toFQDNs`; a plain NetworkPolicy cannot
  express names, so the entry is left out there and listed in an annotation and `warnings()`;
- an IP literal or a CIDR -> `ipBlock` / `toCIDR`.
DNS is allowed only to kube-dns (kube-system, `k8s-app: kube-dns`) on port 53 UDP and TCP; the
Cilium rule also makes the DNS proxy answer only the allowlisted names (its DNS pinning).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from sentinel.policy.load import Allow, Policy

CLUSTER_SUFFIXES = (".svc.cluster.local", ".svc")
KUBE_DNS_NS = {"kubernetes.io/metadata.name": "kube-system"}
KUBE_DNS_POD = {"k8s-app": "kube-dns"}
ANNOTATION = "sentinel.io/"


@dataclass(frozen=True)
class ExportOptions:
    name: str = "sentinel-egress"
    namespace: str | None = None
    app_labels: dict[str, str] = field(default_factory=lambda: {"app": "mem0"}, hash=False)
    label_key: str = "app"  # the label that selects a service's pods


@dataclass(frozen=True)
class Target:
    """Where one allowlist entry points, classified once for both renderers."""

    kind: str  # "service" | "fqdn" | "cidr"
    value: str  # service name, DNS name or CIDR text
    namespace: str | None = None  # for services named with their namespace


def classify(entry: Allow) -> Target:
    if entry.cidr is not None:
        return Target("cidr", str(entry.cidr))
    assert entry.host is not None
    if entry.literal is not None:
        return Target("cidr", str(ipaddress.ip_network(entry.literal)))
    host = entry.host.rstrip(".").lower()
    for suffix in CLUSTER_SUFFIXES:
        if host.endswith(suffix):
            service, _, namespace = host.removesuffix(suffix).partition(".")
            return Target("service", service, namespace or None)
    if "." not in host:  # a bare name is what compose and Kubernetes services are called by
        return Target("service", host)
    return Target("fqdn", host)


def warnings(policy: Policy, flavour: str) -> list[str]:
    """What the target cannot express faithfully (the CLI prints these to stderr)."""
    out = []
    if policy.mode == "audit":
        out.append(
            "mode: audit has no per-policy equivalent; the exported policy ENFORCES "
            + ("(use Cilium's policy audit mode to observe first)" if flavour == "cilium" else "")
        )
    if flavour == "k8s":
        out += [
            f"allow {a.name}: {t.value} is a DNS name; NetworkPolicy cannot match names, so it is "
            "left out (denied): use `sentinel export cilium` (toFQDNs) or an ipBlock"
            for a in policy.allow
            if (t := classify(a)).kind == "fqdn"
        ]
    return out


def _metadata(policy: Policy, opts: ExportOptions, flavour: str) -> dict:
    meta: dict = {
        "name": opts.name,
        "labels": {"app.kubernetes.io/managed-by": "sentinel"},
        "annotations": {
            f"{ANNOTATION}policy-sha256": policy.sha256,
            f"{ANNOTATION}mode": policy.mode,
        },
    }
    if opts.namespace:
        meta["namespace"] = opts.namespace
    dropped = [a.name for a in policy.allow if flavour == "k8s" and classify(a).kind == "fqdn"]
    if dropped:
        meta["annotations"][f"{ANNOTATION}not-expressible"] = ",".join(dropped)
    return meta


# --- Kubernetes NetworkPolicy -----------------------------------------------------------------


def to_network_policy(policy: Policy, opts: ExportOptions | None = None) -> dict:
    opts = opts or ExportOptions()
    egress = [_k8s_dns_rule()]
    for entry in policy.allow:
        peer = _k8s_peer(classify(entry), opts)
        if peer is not None:
            egress.append({"to": [peer], "ports": _k8s_ports(entry)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(policy, opts, "k8s"),
        "spec": {
            "podSelector": {"matchLabels": dict(opts.app_labels)},
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


def _k8s_dns_rule() -> dict:
    return {
        "to": [
            {
                "namespaceSelector": {"matchLabels": dict(KUBE_DNS_NS)},
                "podSelector": {"matchLabels": dict(KUBE_DNS_POD)},
            }
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }


def _k8s_peer(target: Target, opts: ExportOptions) -> dict | None:
    if target.kind == "cidr":
        return {"ipBlock": {"cidr": target.value}}
    if target.kind == "fqdn":
        return None
    peer: dict = {"podSelector": {"matchLabels": {opts.label_key: target.value}}}
    if target.namespace:
        peer["namespaceSelector"] = {
            "matchLabels": {"kubernetes.io/metadata.name": target.namespace}
        }
    return peer


def _k8s_ports(entry: Allow) -> list[dict]:
    return [{"protocol": entry.protocol.upper(), "port": p} for p in entry.ports]


# --- CiliumNetworkPolicy ----------------------------------------------------------------------


def to_cilium(policy: Policy, opts: ExportOptions | None = None) -> dict:
    opts = opts or ExportOptions()
    targets = [(entry, classify(entry)) for entry in policy.allow]
    egress = [_cilium_dns_rule([t for _, t in targets])]
    egress += [_cilium_rule(entry, target, opts) for entry, target in targets]
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": _metadata(policy, opts, "cilium"),
        "spec": {
            "description": f"sentinel: egress allowlist from {policy.source}",
            "endpointSelector": {"matchLabels": dict(opts.app_labels)},
            "egress": egress,
        },
    }


def _cilium_dns_rule(targets: list[Target]) -> dict:
    """DNS to kube-dns only, through Cilium's DNS proxy, which answers only these names."""
    names: list[dict] = []
    for t in targets:
        if t.kind == "fqdn":
            names.append({"matchName": t.value})
        elif t.kind == "service":
            # the resolver tries the search list: NAME.NS.svc.cluster.local first
            ns = t.namespace or "*"
            names.append({"matchPattern": f"{t.value}.{ns}.svc.cluster.local"})
    rule: dict = {"ports": [{"port": "53", "protocol": "ANY"}]}
    if names:
        rule["rules"] = {"dns": _unique(names)}
    return {
        "toEndpoints": [
            {
                "matchLabels": {
                    "k8s:io.kubernetes.pod.namespace": "kube-system",
                    "k8s:k8s-app": "kube-dns",
                }
            }
        ],
        "toPorts": [rule],
    }


def _cilium_rule(entry: Allow, target: Target, opts: ExportOptions) -> dict:
    ports = {"ports": [{"port": str(p), "protocol": entry.protocol.upper()} for p in entry.ports]}
    if target.kind == "cidr":
        return {"toCIDR": [target.value], "toPorts": [ports]}
    if target.kind == "fqdn":
        return {"toFQDNs": [{"matchName": target.value}], "toPorts": [ports]}
    labels = {opts.label_key: target.value}
    if target.namespace:
        labels["k8s:io.kubernetes.pod.namespace"] = target.namespace
    return {"toEndpoints": [{"matchLabels": labels}], "toPorts": [ports]}


def _unique(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for item in items:
        key = tuple(sorted(item.items()))
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


RENDERERS = {"k8s": to_network_policy, "cilium": to_cilium}
