"""The one HTTP client alert deliveries use: marked sockets, no proxies, no retries of its own.

The mark (SO_MARK, policy.mark) is what the ruleset exempts from deny-all; the app cannot set
it without CAP_NET_ADMIN. `trust_env=False`: a proxy from the environment would route alerts
(and the secrets in their URLs) through a host nobody allowlisted.

Why a network backend of our own: httpcore applies `socket_options` only *after* connect(), so
the SYN would leave unmarked and be rejected by deny-all. `MarkedBackend` sets SO_MARK before
connect(), and resolves sink host names itself over marked DNS sockets (libc's resolver would
be redirected to the sentinel's own resolver, which refuses names outside the allowlist).
"""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.resolver
import httpcore
import httpx
from httpcore._backends.sync import SyncStream  # httpcore's own stream over a plain socket

from sentinel.enforce.marks import family_of, marked_socket
from sentinel.redact import redact_text

DEFAULT_TIMEOUT = httpx.Timeout(5.0, connect=3.0)
MAX_RETRY_AFTER = 900.0  # a Retry-After beyond 15 min is capped: alerts must not stall forever

# outcomes
OK, RETRY, REJECTED = "ok", "retry", "rejected"


def make_client(mark: int | None, timeout: httpx.Timeout = DEFAULT_TIMEOUT) -> httpx.Client:
    transport = MarkedTransport(mark) if mark else httpx.HTTPTransport(retries=0, trust_env=False)
    return httpx.Client(
        transport=transport, timeout=timeout, trust_env=False, follow_redirects=False
    )


class MarkedTransport(httpx.HTTPTransport):
    """httpx's transport with a connection pool whose sockets are marked before connect()."""

    def __init__(self, mark: int) -> None:
        super().__init__(retries=0, trust_env=False)
        self._pool = httpcore.ConnectionPool(  # replaces the pool httpx built (same defaults)
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=10,
            max_keepalive_connections=5,
            keepalive_expiry=5.0,
            retries=0,
            network_backend=MarkedBackend(mark),
        )


class MarkedBackend(httpcore.SyncBackend):
    def __init__(self, mark: int, nameservers: list[tuple[str, int]] | None = None) -> None:
        self.mark = mark
        self.nameservers = nameservers  # None: /etc/resolv.conf

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options=None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = resolve_marked(host, self.mark, self.nameservers, timeout or 3.0)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve sink host: {exc}") from None
        last: Exception = httpcore.ConnectError("no address for sink host")
        for address in addresses:
            try:
                return SyncStream(self._connect(address, port, timeout, local_address))
            except TimeoutError as exc:
                last = httpcore.ConnectTimeout(str(exc))
            except PermissionError as exc:  # SO_MARK needs CAP_NET_ADMIN
                msg = f"cannot mark the socket (CAP_NET_ADMIN?): {exc}"
                raise httpcore.ConnectError(msg) from None
            except OSError as exc:
                last = httpcore.ConnectError(str(exc))
        raise last

    def _connect(
        self, address: str, port: int, timeout: float | None, local: str | None
    ) -> socket.socket:
        sock = marked_socket(family_of(address), socket.SOCK_STREAM, self.mark)  # before the SYN
        try:
            sock.settimeout(timeout)
            if local:
                sock.bind((local, 0))
            sock.connect((address, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except BaseException:
            sock.close()
            raise


def resolve_marked(
    host: str,
    mark: int,
    nameservers: list[tuple[str, int]] | None = None,
    timeout: float = 3.0,
    hosts_file: Path = Path("/etc/hosts"),
) -> list[str]:
    """Addresses for a sink host: IP literal, /etc/hosts, else A/AAAA over marked DNS sockets."""
    host = host.strip("[]")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found = _from_hosts_file(host, hosts_file)
    if found:
        return found
    if nameservers is None:
        conf = dns.resolver.Resolver()
        nameservers = [(ns, conf.port) for ns in conf.nameservers]
    out: list[str] = []
    for rdtype in ("A", "AAAA"):
        out += _query_marked(host, rdtype, mark, nameservers, timeout)
    if not out:
        raise OSError(f"no A/AAAA answer for {host}")
    return out


def _query_marked(
    host: str, rdtype: str, mark: int, nameservers: list[tuple[str, int]], timeout: float
) -> list[str]:
    query = dns.message.make_query(host, rdtype)
    for server, port in nameservers:
        with marked_socket(family_of(server), socket.SOCK_DGRAM, mark) as sock:
            try:
                reply = dns.query.udp(query, server, port=port, timeout=timeout, sock=sock)
            except (dns.exception.DNSException, OSError):
                continue  # next nameserver
        wanted = dns.rdatatype.from_text(rdtype)
        return [r.address for rrset in reply.answer if rrset.rdtype == wanted for r in rrset]
    return []


def _from_hosts_file(host: str, path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and host in fields[1:]:
            out.append(fields[0])
    return out


@dataclass(frozen=True)
class Result:
    outcome: str  # ok | retry | rejected
    status: int | None  # HTTP status, None for network errors and timeouts
    detail: str  # short, redacted: safe to log and print
    retry_after: float | None = None  # seconds the server asked us to wait (429/503)
    elapsed: float = 0.0


def post(client: httpx.Client, url: str, body: bytes, headers: dict[str, str]) -> Result:
    """One POST, classified. Never raises for network trouble, never reveals the URL."""
    started = time.monotonic()
    try:
        response = client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        return Result(RETRY, None, f"timeout ({type(exc).__name__})", None, _since(started))
    except (httpx.TransportError, OSError) as exc:
        return Result(RETRY, None, _safe_error(exc), None, _since(started))
    return classify(response.status_code, response.headers, response.text, _since(started))


def classify(status: int, headers: httpx.Headers | dict, text: str, elapsed: float) -> Result:
    snippet = redact_text(text[:200].strip())
    detail = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if 200 <= status < 300:
        return Result(OK, status, detail, None, elapsed)
    if status == 429 or status >= 500 or status == 408:
        wait = parse_retry_after(headers.get("retry-after")) if status in (429, 503) else None
        return Result(RETRY, status, detail, wait, elapsed)
    return Result(REJECTED, status, detail, None, elapsed)  # 400, 403, 404...: never retried


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped; None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return None
        seconds = when - (time.time() if now is None else now)
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _safe_error(exc: BaseException) -> str:
    # httpx messages can embed the request URL; the URL may be the secret
    return redact_text(f"{type(exc).__name__}: {exc}")[:200]


def _since(started: float) -> float:
    return time.monotonic() - started
