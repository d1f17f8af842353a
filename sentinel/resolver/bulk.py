"""Many names at once (start-up, a one-shot apply): every question of every name's A and AAAA
chain is pipelined over one marked UDP socket, up to `window` in flight.

The same conversation as `upstream.chase` (`chase_steps`: CNAME hops per type, each type on its
own), driven for all names together instead of one thread per query: 1,000 names cost about
2,000 small datagrams and no thread hand-offs. Replies are matched by id *and* question
(`is_response`); a late or foreign datagram is ignored. A truncated answer is asked again over
TCP; a question unanswered after the upstream's timeout fails its type, as a blocking query
would. The window keeps the upstream's own receive buffer from overflowing.
"""

from __future__ import annotations

import collections
import ipaddress
import itertools
import secrets
import selectors
import socket
import struct
import time
from collections.abc import Generator, Iterable
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from sentinel.policy.load import DnsSettings
from sentinel.resolver import loops
from sentinel.resolver.upstream import (
    CNAME,
    TYPES,
    Answer,
    Resolution,
    TypeAnswer,
    Upstream,
    UpstreamError,
    add_record,
    chase_steps,
    combine,
)

WINDOW = 64
RETRY_AFTER = 0.5  # a question unanswered this long is sent once more (a datagram can be lost)

Steps = Generator[tuple[str, int], Any, TypeAnswer]
A, AAAA = int(dns.rdatatype.A), int(dns.rdatatype.AAAA)
TC, RCODE = 0x0200, 0x000F
MAX_POINTERS = 64


class Malformed(Exception):
    pass


def question_wire(name: str, qtype: int) -> bytes:
    """The question section for `name` (plain labels: allowlisted hostnames), class IN."""
    labels = [label.encode("ascii") for label in name.split(".") if label]
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0" + struct.pack("!HH", qtype, 1)


def read_name(wire: bytes, pos: int) -> tuple[str, int]:
    """A (possibly compressed) name at `pos`: (lower-case text, position after it)."""
    labels, end, jumps = [], None, 0
    while True:
        if pos >= len(wire):
            raise Malformed("name runs past the end")
        size = wire[pos]
        if size & 0xC0 == 0xC0:
            if pos + 1 >= len(wire) or jumps >= MAX_POINTERS:
                raise Malformed("bad compression pointer")
            end = pos + 2 if end is None else end
            pos, jumps = ((size & 0x3F) << 8) | wire[pos + 1], jumps + 1
            continue
        if size == 0:
            return ".".join(labels).lower(), (pos + 1 if end is None else end)
        labels.append(wire[pos + 1 : pos + 1 + size].decode("ascii", "replace"))
        pos += 1 + size


def parse_reply(wire: bytes, qid: int, question: bytes) -> tuple[int, Answer] | None:
    """(flags, Answer) when `wire` answers our question `qid`; None for anything else."""
    if len(wire) < 12:
        return None
    rid, flags, qd, an = struct.unpack("!HHHH", wire[:8])
    if rid != qid or not flags & 0x8000 or qd != 1:
        return None
    end = 12 + len(question)
    if wire[12:end].lower() != question.lower():
        return None  # not our question (0x20-safe compare)
    records: dict[tuple[str, int], tuple[int, list[Any]]] = {}
    pos = end
    try:
        for _ in range(an):
            owner, pos = read_name(wire, pos)
            rtype, _rclass, ttl, size = struct.unpack("!HHIH", wire[pos : pos + 10])
            pos += 10
            if pos + size > len(wire):
                raise Malformed("record runs past the end")
            data = wire[pos : pos + size]
            if rtype == A and size == 4 or rtype == AAAA and size == 16:
                add_record(records, (owner, rtype), ttl, [ipaddress.ip_address(data)])
            elif rtype == CNAME:
                add_record(records, (owner, rtype), ttl, [read_name(wire, pos)[0]])
            pos += size
    except (Malformed, struct.error, ValueError):
        return None
    return flags, Answer(flags & RCODE, records)


def resolve_many(
    upstream: Upstream, names: Iterable[str], settings: DnsSettings, window: int = WINDOW
) -> dict[str, Resolution | UpstreamError]:
    """name -> its Resolution, or the UpstreamError when every type failed."""
    names = list(dict.fromkeys(names))
    answers: dict[tuple[str, str], TypeAnswer] = {}
    todo: collections.deque[tuple[tuple[str, str], Steps, tuple[str, int]]] = collections.deque()
    for name in names:
        for rdtype, _, _ in TYPES:
            steps = chase_steps(name, rdtype)
            todo.append(((name, rdtype), steps, next(steps)))
    try:
        _pipeline(upstream, todo, answers, window)
    except OSError as exc:  # no socket or no route to the upstream: every name failed, as
        # one blocking query would say (not a traceback out of `apply`)
        failed = UpstreamError(f"{_where(upstream)}: {type(exc).__name__}: {exc}")
        return dict.fromkeys(names, failed)
    out: dict[str, Resolution | UpstreamError] = {}
    for name in names:
        try:
            out[name] = combine(name, [answers[(name, t)] for t, _, _ in TYPES], settings)
        except UpstreamError as exc:
            out[name] = exc
    return out


def _pipeline(upstream: Upstream, todo: collections.deque, answers: dict, window: int) -> None:
    ids = itertools.count(secrets.randbelow(65536))
    inflight: dict[int, tuple[tuple[str, str], Steps, tuple[str, int], bytes, float]] = {}
    first_try: dict[tuple[str, str], float] = {}  # key -> when its current question was sent
    try:
        _run_pipeline(upstream, todo, answers, window, ids, inflight, first_try)
    finally:
        for qid, (*_, question, _deadline) in inflight.items():
            loops.release(_query(qid, question))


def _query(qid: int, question: bytes) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question


def _run_pipeline(upstream, todo, answers, window, ids, inflight, first_try) -> None:  # noqa: ANN001
    with upstream._socket(socket.SOCK_DGRAM) as sock, selectors.DefaultSelector() as sel:
        # connected: the kernel passes only the upstream's datagrams to us (no forged
        # answers from another local process that found our port)
        sock.connect((upstream.address, upstream.port))
        sel.register(sock, selectors.EVENT_READ)
        # bounded: every question is sent once and ends (answer or timeout) within the
        # timeout; each name asks at most MAX_CNAME_DEPTH questions per type
        while todo or inflight:
            while todo and len(inflight) < window:
                key, steps, (qname, qtype) = todo.popleft()
                qid = _free_id(ids, inflight)
                question = question_wire(qname, qtype)
                try:
                    sock.send(_query(qid, question))
                except BlockingIOError:
                    todo.appendleft((key, steps, (qname, qtype)))
                    break
                except OSError as exc:
                    answers[key] = TypeAnswer(key[1], error=f"{_where(upstream)}: {exc}")
                    continue
                now = time.monotonic()
                sent = first_try.setdefault(key, now)  # a retry keeps the first send time
                retry = sent + min(RETRY_AFTER, upstream.timeout / 2)
                deadline = retry if now < retry else sent + upstream.timeout
                inflight[qid] = (key, steps, (qname, qtype), question, deadline)
                loops.hold(_query(qid, question))  # ours: if it comes back, it is a loop
            soonest = min((d for *_, d in inflight.values()), default=time.monotonic())
            if sel.select(max(0.0, soonest - time.monotonic())):
                _receive(upstream, sock, inflight, todo, answers, first_try)
            now = time.monotonic()
            for qid in [i for i, (*_, d) in inflight.items() if d <= now]:
                key, steps, asked, question, _ = inflight.pop(qid)
                loops.release(_query(qid, question))
                if now < first_try[key] + upstream.timeout:  # once more, within the timeout
                    todo.appendleft((key, steps, asked))
                    continue
                answers[key] = TypeAnswer(key[1], error=f"{_where(upstream)}: Timeout")


def _receive(upstream, sock, inflight, todo, answers, first_try) -> None:  # noqa: ANN001
    while True:
        try:
            wire = sock.recv(65535)
        except BlockingIOError:
            return
        except OSError:  # e.g. ICMP port unreachable: the queries time out on their own
            return
        if len(wire) < 2:
            continue
        qid = int.from_bytes(wire[:2], "big")
        entry = inflight.get(qid)
        if entry is None:
            continue
        key, steps, asked, question, _ = entry
        parsed = parse_reply(wire, qid, question)
        if parsed is None:
            continue  # a late answer to an earlier question that had this id, or garbage
        del inflight[qid]
        loops.release(_query(qid, question))
        _advance(upstream, key, steps, asked, parsed, todo, answers)
        first_try.pop(key, None)  # the next hop of a chain starts its own clock


def _advance(upstream, key, steps, asked, parsed, todo, answers) -> None:  # noqa: ANN001
    flags, reply = parsed
    try:
        if flags & TC:  # rare: the answer does not fit UDP; ask again over TCP (blocking)
            q = dns.message.make_query(asked[0] + ".", asked[1])
            reply = Answer.from_message(upstream.checked(upstream.tcp(q)))
        elif reply.rcode not in (0, 3):  # NOERROR, NXDOMAIN
            raise UpstreamError(f"{_where(upstream)}: {dns.rcode.to_text(reply.rcode)}")
        question = steps.send(reply)
    except StopIteration as done:
        answers[key] = done.value
    except UpstreamError as exc:
        answers[key] = TypeAnswer(key[1], error=str(exc))
    except (OSError, dns.exception.DNSException) as exc:
        answers[key] = TypeAnswer(key[1], error=f"{_where(upstream)}: {type(exc).__name__}: {exc}")
    else:
        todo.append((key, steps, question))  # the next hop of a CNAME chain


def _free_id(ids: itertools.count, inflight: dict) -> int:
    for _ in range(65536):
        qid = next(ids) % 65536
        if qid not in inflight:
            return qid
    raise RuntimeError("no free DNS id")  # cannot happen with window < 65536


def _where(upstream: Upstream) -> str:
    return f"{upstream.address}:{upstream.port}"
