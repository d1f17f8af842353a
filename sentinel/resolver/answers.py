"""What an upstream answer said, for the record: the addresses and CNAMEs in a DNS reply.

In audit mode the resolver relays names that are not allowlisted to the upstream; the event it
records carries these, so `sentinel policy suggest` can tie a later connection to an address
back to the name the app asked for (CNAME targets collapse onto the asked name).
"""

from __future__ import annotations

from typing import Any

MAX_RECORDS = 64  # a hostile reply must not bloat the event


def answer_summary(wire: bytes) -> dict[str, Any]:
    """{"rcode": "NOERROR", "addresses": [...], "cnames": [...], "ttl": N} or {} if unparsable."""
    import dns.exception
    import dns.message
    import dns.rcode
    import dns.rdatatype

    try:
        reply = dns.message.from_wire(wire)
    except (dns.exception.DNSException, ValueError):
        return {}
    addresses: list[str] = []
    cnames: list[str] = []
    ttls: list[int] = []
    for rrset in reply.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            addresses += [r.address for r in rrset]
            ttls.append(rrset.ttl)
        elif rrset.rdtype == dns.rdatatype.CNAME:
            cnames += [r.target.to_text(omit_final_dot=True).lower() for r in rrset]
    out: dict[str, Any] = {
        "rcode": dns.rcode.to_text(reply.rcode()),
        "addresses": sorted(set(addresses))[:MAX_RECORDS],
        "cnames": list(dict.fromkeys(cnames))[:MAX_RECORDS],
    }
    if ttls:
        out["ttl"] = min(ttls)
    return out
