# sentinel's in-process guard. Runs inside the *application's* interpreter.
#
# Standard library only (the app's virtualenv has none of sentinel's dependencies), and cheap at
# start-up: nothing is imported that Python has not loaded already (no `socket`, `_socket`,
# `json`, `threading`), the allowlist is read with `marshal`; `_socket` and `_json` are used only
# once the app itself uses sockets or a report is sent.
#
# `boot()` (called by sitecustomize.py or the .pth loader) installs a `sys.addaudithook` hook that
# checks every name resolution and every connect/sendto/sendmsg against the allowlist the
# sentinel compiled to `$SENTINEL_STATE_DIR/guard/allowlist.marshal`, raises `SecurityError` for
# anything else (enforce mode) and reports each attempt over a unix datagram socket without
# ever blocking the app. See docs/guard.md for the contract and the limits.
#
# Hardening: the hook and everything it calls run from a private copy of this module (its own
# globals and a snapshot of builtins), so rebinding this module's attributes, builtins or
# `socket` functions does not change what the hook does; audit hooks cannot be removed. What the
# hook takes from `_socket` it takes from C objects only: a socket's family and type through the
# getters of the C type under the socket's class, `inet_pton`/`inet_ntop` only as C functions.

import _imp
import _thread
import builtins
import marshal
import os
import sys
import time

__all__ = ["SecurityError", "boot", "status"]
_CODE = sys._getframe(0).f_code  # this module's code: the private copy reuses it (no recompile)

if "SecurityError" not in globals():  # the private copy reuses the public class

    class SecurityError(PermissionError):
        """A network call the sentinel guard does not allow (errno EACCES)."""


# --- constants and bound C functions (in the private copy these cannot be rebound by the app) --
if sys.platform.startswith("linux"):  # Linux's values: no _socket import at start-up
    _AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK, _AF_PACKET, _AF_ALG = 1, 2, 10, 16, 17, 38
else:  # elsewhere (the pytest plugin on a laptop) ask _socket
    import _socket

    _AF_UNIX, _AF_INET, _AF_INET6 = _socket.AF_UNIX, _socket.AF_INET, _socket.AF_INET6
    _AF_NETLINK = _AF_ALG = -2
    _AF_PACKET = getattr(_socket, "AF_PACKET", -1)
_LOCAL_FAMILIES = frozenset((_AF_UNIX, _AF_NETLINK, _AF_ALG))
_TYPE_DICT = type.__dict__["__dict__"].__get__  # a type's own namespace (never a metaclass's)
_TYPE_GETATTR = type.__getattribute__
_TYPE_BASE = type.__dict__["__base__"].__get__
_TYPE_FLAGS = type.__dict__["__flags__"].__get__
_C_FIELDS = (type(type.__dict__["__dict__"]), type(type.__dict__["__base__"]))  # getset, member
_C_FUNCTION = type(len)
_MODULE = type(sys)
_BORN_IN_C = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE (3.10+: every C type; no class statement)
_HEAPTYPE = 1 << 9  # a type without it is a static C type (3.8, 3.9)
_ADDR_FNS = []  # [inet_pton, inet_ntop] of _socket, taken (and checked) at first use
_SOCK_TYPE = []  # the C socket type of the first socket the hook saw (the report socket's type)
# the real _socket even when the app hid it from imports (the report socket needs it)
_create_dynamic, _create_builtin = _imp.create_dynamic, _imp.create_builtin
_ext_suffixes = _imp.extension_suffixes
_BUILTIN_NAMES = sys.builtin_module_names
_monotonic = time.monotonic
_time = time.time
_sleep = time.sleep
_getframe = sys._getframe
_getpid = os.getpid
_urandom = os.urandom
_stat = os.stat
_fstat = os.fstat
_uname = os.uname
_open_fd, _close_fd, _O_RDONLY = os.open, os.close, os.O_RDONLY
_environ_get = os.environ.get
_marshal_loads = marshal.loads
_EACCES = 13
_PROTO_BY_TYPE = {1: "tcp", 2: "udp"}  # SOCK_STREAM, SOCK_DGRAM
_PROTO_BY_NUMBER = {6: "tcp", 17: "udp", 262: "tcp"}  # 262: MPTCP
_LOCAL_NAMES = frozenset(
    ("", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
)
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
_FORMAT = "sentinel-guard-allowlist/4"
# allowlist.marshal: this line, a header line b"%08x %08x\n" % (payload length, check), then the
# payload, marshal (version 4) of the document; check = int.from_bytes(payload, "little") mod
# _CHECK_MOD. Both are verified before anything unmarshals the payload (docs/guard.md).
_MAGIC = b"sentinel-guard-allowlist/4\n"
_MAGIC_FAMILY = b"sentinel-guard-allowlist/"
_HEADER_LEN = 18
_CHECK_MOD = 1073741789  # 2**30 - 35, prime; one CPython digit, so the remainder is one C loop
_QUEUE_MAX = 256
_CACHE_MAX = 4096
_RELOAD_EVERY = 0.5
_TICK = 0.05
_STDLIB = os.path.dirname(os.__file__)
_HERE = __file__
# The builtins the private copy may use, snapshotted at boot (the app may rebind builtins later;
# a copy of all ~160 cost ~0.1 ms at every start and exit). tests/test_guard_lazy.py checks that
# every builtin name this file's code looks up is listed.
_BUILTINS = (
    "AttributeError", "BaseException", "BlockingIOError", "EOFError", "Exception", "ImportError",
    "IndexError", "KeyError", "MemoryError", "OSError", "PermissionError", "TypeError",
    "UnicodeDecodeError", "ValueError", "__build_class__", "__import__", "bool", "bytearray",
    "bytes", "callable", "dict", "enumerate", "exec", "filter", "float", "format", "frozenset",
    "getattr", "globals", "hasattr", "hex", "id", "int", "isinstance", "issubclass", "len", "list",
    "map", "max", "object", "open", "range", "reversed", "set", "setattr", "slice", "str", "tuple",
    "type", "zip",
)  # fmt: skip

_tuple_slice = tuple.__getitem__
_ALL = slice(None)

_BOOTED = []  # public-module flag: boot() runs once per interpreter


# --- public entry points (run in the public module) -----------------------------------------
def boot(origin="sitecustomize"):
    # Install the guard once; any failure installs a deny-all hook instead (never fails open).
    if _BOOTED:
        return
    _BOOTED.append(origin)
    mode = (os.environ.get("SENTINEL_GUARD") or "").strip().lower()
    if mode == "off":
        return
    try:
        core = _private_copy()
        core["_install"](mode, origin)
    except BaseException as exc:  # noqa: BLE001 - a broken guard must not fail open
        deny_all(f"guard failed to start ({type(exc).__name__}: {exc})")


def status():
    # What the guard in this interpreter is doing (read-only snapshot, for diagnostics).
    return dict(_STATUS[0]()) if _STATUS else {"installed": False, "booted": list(_BOOTED)}


if "_STATUS" not in globals():  # shared with the private copy: status() reads it
    _STATUS = []


def _private_copy():
    # Execute this module's code again into a private namespace with a builtins snapshot.
    ns = {
        # (zip without strict=: the guard runs on Pythons older than 3.10)
        "__builtins__": dict(zip(_BUILTINS, map(builtins.__dict__.__getitem__, _BUILTINS))),  # noqa: B905
        "__name__": "sentinel_guard.<private>",
        "__file__": __file__,
        "SecurityError": SecurityError,
        "_LoadError": _LoadError,
        "_STATUS": _STATUS,
    }
    exec(_CODE, ns)
    return ns


def deny_all(reason, stream=None):
    # The fallback when the guard cannot run: every non-local network call raises.
    local = _LOCAL_FAMILIES

    def hook(event, args):
        if event not in (
            "socket.connect",
            "socket.sendto",
            "socket.sendmsg",
            "socket.getaddrinfo",
            "socket.gethostbyname",
            "socket.gethostbyname_ex",
        ):
            return
        if event.startswith("socket.send") or event == "socket.connect":
            if args[1] is None:
                return
            try:
                family = _kind(args[0])[0]
            except Exception:  # noqa: BLE001
                family = -1
            if family in local:
                return
            address = _items(args[1])
            host = _exact(address[0]) if isinstance(address, tuple) and address else None
            # only a loopback literal: C resolves a name in connect() unseen (/etc/hosts may
            # send "localhost" anywhere)
            packed = None if host is None else _packed(host)
            if host is None or packed is not None and _is_loopback(packed):
                return
        elif _is_local_host(_exact(args[0])):
            return
        raise SecurityError(_EACCES, f"sentinel guard (deny-all): {reason}")

    sys.addaudithook(hook)
    _STATUS.append(lambda: {"installed": True, "mode": "deny-all", "reason": reason})
    _say(f"FAIL CLOSED: {reason}; every non-loopback network call raises SecurityError", stream)


def _say(line, stream=None):
    try:
        (stream or sys.stderr).write(f"sentinel-guard[{_getpid()}]: {line}\n")
    except Exception:  # noqa: BLE001 - no stderr: nothing to say it on
        pass


# --- sockets and addresses, read through C code only ------------------------------------------
def _unarmed(sock):
    raise TypeError("the socket getters are taken at the first socket event")


_GS = [_unarmed, _unarmed, _unarmed]  # the C type's family, type and proto getters, once seen


def _c_socket_type(kind):
    # The C type under the class `kind` that defines the socket getters, else None. Walks the
    # real base chain (tp_base, not a metaclass's `__mro__`) and accepts only a type made by C
    # code (no class statement can make one), so a subclass's `family` property cannot lie.
    for _ in range(64):
        if kind is None or kind is object:
            return None
        flags = _TYPE_FLAGS(kind)
        if flags & _BORN_IN_C or not flags & _HEAPTYPE:
            ns = _type_ns(kind)
            if (
                type(ns.get("family")) in _C_FIELDS
                and type(ns.get("type")) in _C_FIELDS
                and type(ns.get("proto")) in _C_FIELDS
            ):
                return kind
        kind = _TYPE_BASE(kind)
    return None


def _type_ns(kind):
    # A C type's own namespace; a static type Python has not used yet gets it made first.
    ns = _TYPE_DICT(kind)
    if ns is None:  # not "ready" yet: any attribute lookup on the type readies it
        _TYPE_GETATTR(kind, "__name__")
        ns = _TYPE_DICT(kind)
    return ns


def _kind(sock):
    # (family, type) of a socket by the C getters; taken from the socket's own C type the first
    # time (or again for a socket of a second `_socket` instance, Python 3.12+).
    gs = _GS
    try:
        return gs[0](sock), gs[1](sock)
    except TypeError:
        pass
    base = _c_socket_type(type(sock))
    if base is None:
        raise TypeError(f"not a socket: {type(sock).__name__}")
    ns = _type_ns(base)
    gs[:] = ns["family"].__get__, ns["type"].__get__, ns["proto"].__get__
    _SOCK_TYPE[:] = (base,)
    return gs[0](sock), gs[1](sock)


def _addr_fns():
    # [inet_pton, inet_ntop] of `_socket`, accepted only as C functions bound to a module (the
    # app may have rebound the module's names before the guard first needed them). Without them
    # [None, None]: IPv4 literals are then read by _pton4 and every other literal is a name
    # (refused unless allowlisted).
    if not _ADDR_FNS:
        fns = [None, None]
        try:
            mod = sys.modules.get("_socket") or __import__("_socket")
            for i, name in enumerate(("inet_pton", "inet_ntop")):
                fn = getattr(mod, name, None)
                if type(fn) is _C_FUNCTION and fn.__name__ == name and type(fn.__self__) is _MODULE:
                    fns[i] = fn
        except Exception:  # noqa: BLE001 - no _socket at all: the fallback reads IPv4 only
            pass
        if fns[0] is None or fns[1] is None:
            fns = [None, None]
        _ADDR_FNS[:] = fns
    return _ADDR_FNS


def _pton4(host):
    # A strict dotted quad (what glibc's inet_pton accepts, never more), else None.
    parts = host.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        if not (part.isascii() and part.isdigit()) or len(part) > 3 or part[0] == "0" != part:
            return None
        if int(part) > 255:
            return None
    return bytes(map(int, parts))  # (no generator: one code object less to load)


def _packed(host):
    # An IP literal as normalized packed bytes (IPv4-mapped IPv6 -> 4 bytes); None for names.
    if isinstance(host, bytes):
        try:
            host = host.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(host, str):
        return None
    if host == "":
        return b"\x00\x00\x00\x00"  # INADDR_ANY: the kernel connects to this host
    if host == "<broadcast>":
        return b"\xff\xff\xff\xff"
    pton = (_ADDR_FNS or _addr_fns())[0]
    if pton is None:
        return _pton4(host)
    try:
        return pton(_AF_INET, host)
    except (OSError, ValueError):
        pass
    try:
        raw = pton(_AF_INET6, host.partition("%")[0])
    except (OSError, ValueError):
        return None
    return raw[12:] if raw[:12] == _V4_MAPPED else raw


def _is_loopback(packed):
    if len(packed) == 4:
        return packed[0] == 127 or packed == b"\x00\x00\x00\x00"
    return packed == b"\x00" * 15 + b"\x01" or packed == b"\x00" * 16


def _is_local_host(host):
    if host is None:
        return True
    packed = _packed(host)
    if packed is not None:
        return _is_loopback(packed)
    name = _norm_name(host)
    return name in _LOCAL_NAMES or name.endswith(".localhost")


def _norm_name(host):
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    return str(host).rstrip(".").lower()


def _host_text(host):
    # What a report shows as the name (anyio passes IDNA-encoded bytes).
    if isinstance(host, bytes):
        return host.decode("ascii", "replace")
    return None if host is None else str(host)


def _ip_text(packed):
    ntop = (_ADDR_FNS or _addr_fns())[1]
    if ntop is not None:
        return ntop(_AF_INET if len(packed) == 4 else _AF_INET6, packed)
    if len(packed) == 4:
        return ".".join(map(str, packed))
    return packed.hex(":", 2)  # uncompressed, still a valid IPv6 address


def _port(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None  # None or a service name: the connect check sees the number


def _exact(value):
    # An exact str, bytes or int for a subclass of one (anything else as it is): what CPython's
    # C code reads from it. A subclass's own __eq__, __hash__, __str__ or methods must never steer
    # a decision or match a remembered one (e.g. a str claiming to equal an allowed address).
    kind = type(value)
    if kind is str or kind is int or kind is bytes or value is None:
        return value
    if issubclass(kind, str):
        return "".join((value,))
    if issubclass(kind, bytes):
        return b"".join((value,))
    if issubclass(kind, int):
        return int.__index__(value)
    return value


def _items(address):
    # A tuple subclass's real items as an exact tuple (what CPython's C code parses; its own
    # __getitem__, __iter__ or __len__ could claim an allowed address); anything else as it is.
    if type(address) is not tuple and isinstance(address, tuple):
        return _tuple_slice(address, _ALL)
    return address


def _plain(values):
    # True when every value is an exact str, bytes, int or None (safe as part of a set key).
    for value in values:
        kind = type(value)
        if not (kind is str or kind is int or kind is bytes or value is None):
            return False
    return True


def _sock_proto(sock_type, number):
    # What a socket speaks: its type's protocol unless its protocol number says otherwise (an ICMP
    # "ping" socket is SOCK_DGRAM, SCTP can be SOCK_STREAM): those are "other", never tcp/udp.
    name = _PROTO_BY_TYPE.get(sock_type & 0xF, "other")
    if number and _PROTO_BY_NUMBER.get(number) != name:
        return "other"
    return name


def _proto(sock_type, number=0):
    return _PROTO_BY_TYPE.get(sock_type & 0xF) or _PROTO_BY_NUMBER.get(number) or "any"


# --- the compiled allowlist -----------------------------------------------------------------
if "_LoadError" not in globals():  # the private copy reuses the public class

    class _LoadError(Exception):
        pass


if __name__ == "sentinel_guard.<private>":  # the rest: the private copy only (the
    # public module needs boot/status/deny_all and the helpers above)

    def _sha256_hex(data):
        if len(data) > 131072:  # OpenSSL's is ~25x faster; loading it costs ~4 ms, so only when big
            try:
                from _hashlib import openssl_sha256

                return openssl_sha256(data).hexdigest()
            except ImportError:
                pass
        try:
            from _sha256 import sha256  # 3.11
        except ImportError:
            try:
                from _sha2 import sha256  # 3.12+
            except ImportError:
                from hashlib import sha256
        return sha256(data).hexdigest()

    def _json_dumps(value):
        try:
            import _json

            enc = _json.make_encoder(
                None, str, _json.encode_basestring_ascii, None, ":", ",", False, False, True
            )
            return "".join(enc(value, 0))
        except ImportError:
            import json

            return json.dumps(value, separators=(",", ":"), default=str)

    def _policy_sha(path):
        # Same digest as sentinel.policy.load.parse_policy: sha256 of the UTF-8 text.
        with open(path, "rb") as f:
            raw = f.read()
        return _sha256_hex(raw if raw.isascii() else raw.decode("utf-8", "replace").encode())

    def _compile_rules(doc, generation):
        # allowlist.marshal: names, packed addresses and CIDR groups (each a sorted blob of packed
        # networks, binary-searched: no per-network work at start-up) as the sentinel compiled them
        # (sentinel.guard.compile.guard_document); only their types are checked here.
        names, addrs, nets = doc["names"], doc["addrs"], []
        if type(names) is not dict or type(addrs) is not dict:
            raise _LoadError("names and addrs must be dicts")
        for key, specs in (*names.items(), *addrs.items()):
            if not (
                type(key) is str and key in names or type(key) is bytes and len(key) in (4, 16)
            ):
                raise _LoadError(f"bad name or address {key!r}")
            for proto, ports in specs:
                if type(proto) is not str or type(ports) is not frozenset:
                    raise _LoadError(f"bad spec for {key!r}")
        count = doc["rules"]
        for width, bits, blob, proto, ports in doc["nets"]:
            if width not in (4, 16) or type(bits) is not int or not 0 <= bits <= width * 8:
                raise _LoadError(f"bad nets group (width {width!r}, prefix {bits!r})")
            if type(blob) is not bytes or len(blob) % width or type(ports) is not frozenset:
                raise _LoadError(f"bad nets group of width {width}")
            nets.append((width, bits, blob, (str(proto), ports)))
        return {
            "names": names,
            "addrs": addrs,
            "nets": tuple(nets),
            "mode": str(doc.get("mode", "enforce")),
            "policy_sha256": str(doc.get("policy_sha256", "")),
            "generation": generation,
            "entries": count,
            "cache": {},  # decisions for this allowlist only; replaced with it
            "allowed": set(),  # raw audit arguments already allowed (the hook's fast path)
        }

    def _masked(packed, bits):
        # The network of `packed` at prefix length `bits`, as packed bytes of the same width.
        width = len(packed)
        shift = width * 8 - bits
        return ((int.from_bytes(packed, "big") >> shift) << shift).to_bytes(width, "big")

    def _in_blob(blob, width, key):
        # Binary search for `key` in a sorted concatenation of `width`-byte records.
        lo, hi = 0, len(blob) // width
        while lo < hi:
            mid = (lo + hi) // 2
            here = blob[mid * width : mid * width + width]
            if here < key:
                lo = mid + 1
            elif here > key:
                hi = mid
            else:
                return True
        return False

    def _spec_allows(specs, port, proto):
        for spec_proto, ports in specs:
            if (proto == "any" or spec_proto == proto) and (port is None or port in ports):
                return True
        return False

    # --- the installed guard (runs in the private copy) -----------------------------------------
    # `_install` runs once per interpreter; each step it calls builds closures over the state it
    # created (the hook and everything it calls keep their references in closure cells, as one
    # function did before), so a step function rebound after start-up changes nothing.
    def _install(mode_env, origin):
        # Load the allowlist, install the audit hook and start the reporter thread.
        cfg = _config(mode_env)
        st, counts, queue = _new_state()
        hostname = _norm_name(_uname().nodename)  # what gethostname() returns
        try_load = _loader(cfg, st, counts)
        try_load(True)
        mode = _pick_mode(cfg, st)
        enforce = mode == "enforce"
        base_message, violation, submit = _reporting(st, counts, queue, mode, enforce)
        denial, decide = _decider(st, try_load, hostname)
        handlers, remember = _address_checks(st, counts, decide, violation)
        raw, precheck = _socket_checks(st, enforce, decide, violation, handlers)
        tamper, own = _tamper_check(counts, violation)
        handlers.update(raw)
        handlers.update(tamper)
        hook = _dispatch(handlers, st)
        _protect(st, own, [hook, *handlers.values(), precheck, denial, decide, violation, remember])
        snapshot = _snapshot(st, counts, origin, mode)
        sys.addaudithook(hook)
        _STATUS.append(snapshot)
        reporter = _Reporter(cfg, st, counts, queue, try_load, snapshot, base_message)
        reporter.start()
        _announce_fail_closed(st, enforce, base_message, submit)
        _follow_fork_and_exit(st, queue, reporter)
        return hook

    def _new_state():
        # The guard's mutable state, its counters and the report queue.
        st = {  # all mutable state lives here, reachable only through the hook's closure
            "rules": None,
            "allowed": frozenset(),  # rules["allowed"] of the rules in force (the hook reads it)
            "fail_reason": None,
            "key": None,
            "generation": 0,
            "patched": False,
            "pid": _getpid(),
        }
        counts = {
            "checks": 0,
            "blocked": 0,
            "audited": 0,
            "queued": 0,
            "sent": 0,
            "dropped_queue_full": 0,  # written by the app threads only
            "dropped_send_failed": 0,  # written by the reporter thread only
            "dropped_at_exit": 0,  # still queued when the process exited
            "send_errors": 0,
            "reloads": 0,
            "reload_rejected": 0,
            "tamper": 0,
        }
        queue = []  # list.append/pop(0) are atomic under the GIL; bounded by _QUEUE_MAX
        return st, counts, queue

    def _loader(cfg, st, counts):
        # try_load(first): (re)load the allowlist when its files changed; keep the last good one.

        def try_load(first):
            key = (_stat_key(cfg["allowlist"]), _stat_key(cfg["policy"]) if cfg["policy"] else None)
            if not first and key == st["key"]:
                return
            st["key"] = key
            try:
                rules = _load(cfg, st["generation"] + 1)
            except _LoadError as exc:
                if st["rules"] is None:
                    st["fail_reason"] = str(exc)
                else:
                    counts["reload_rejected"] += 1  # keep the last good allowlist
                return
            st["allowed"] = rules["allowed"]  # before the rules: never the old set with new rules
            st["rules"] = rules
            st["generation"] = rules["generation"]
            st["fail_reason"] = None
            if not first:
                counts["reloads"] += 1

        return try_load

    def _pick_mode(cfg, st):
        # SENTINEL_GUARD, else the allowlist's mode; anything else (or nothing) enforces.
        mode = cfg["mode"] or (st["rules"]["mode"] if st["rules"] else "enforce")
        if mode not in ("enforce", "audit"):
            mode = "enforce"
        return mode

    def _reporting(st, counts, queue, mode, enforce):
        # Messages to the sentinel: the common fields, the violation (raises when enforcing), the
        # never-blocking queue.

        def base_message(kind):
            return {
                "v": 1,
                "type": kind,
                "pid": st["pid"],
                "exe": sys.executable,
                "mode": mode,
                "ts": _time(),
            }

        def violation(event, host, ip, port, proto, reason):
            counts["blocked" if enforce else "audited"] += 1
            ident = _uuid4()
            frame, stack = _stack()
            msg = base_message("egress_attempt")
            msg.update(
                id=ident,
                event=event,
                verdict="blocked" if enforce else "audited",
                host=_host_text(host),
                ip=ip,
                port=port,
                protocol=proto,
                reason=reason,
                frame=frame,
                stack=stack,
                fail_closed=st["rules"] is None,
            )
            submit(msg)
            if enforce:
                raise SecurityError(_EACCES, f"sentinel guard: {reason} (event {ident})")

        def submit(msg):
            # Never blocks: a bounded list append; the reporter thread does the socket work.
            if len(queue) >= _QUEUE_MAX:
                counts["dropped_queue_full"] += 1
                return
            counts["queued"] += 1
            queue.append(msg)

        return base_message, violation, submit

    def _decider(st, try_load, hostname):
        # decide(kind, host, port, proto) -> None (allowed) or the reason; cached per allowlist.

        def denial(rules, kind, host, port, proto):
            # None when allowed, else the reason. kind: 'name' | 'addr' | 'reverse'.
            if rules is None:
                return None if _is_local_host(host) else f"fail closed: {st['fail_reason']}"
            packed = _packed(host)
            if packed is not None:
                if kind == "name" or _is_loopback(packed):
                    return None  # a literal needs no DNS; its connect is checked
                specs = rules["addrs"].get(packed)
                if specs is not None and (kind == "reverse" or _spec_allows(specs, port, proto)):
                    return None
                for width, bits, blob, spec in rules["nets"]:
                    if width == len(packed) and (
                        kind == "reverse" or _spec_allows((spec,), port, proto)
                    ):
                        if _in_blob(blob, width, _masked(packed, bits)):
                            return None
                what = "reverse lookup of" if kind == "reverse" else "connection to"
                where = "" if kind == "reverse" else f" port {port}/{proto}"
                return f"{what} {_ip_text(packed)}{where} is not allowlisted"
            name = _norm_name(host)
            if name in _LOCAL_NAMES or name.endswith(".localhost") or name == hostname:
                return None
            specs = rules["names"].get(name)
            if specs is None:
                return f"name {name!r} is not allowlisted"
            if kind != "reverse" and not _spec_allows(specs, port, proto):
                return f"{name} port {port}/{proto} is not allowlisted"
            return None

        def decide(kind, host, port, proto):
            host, port = _exact(host), _exact(port)  # never a subclass's own __eq__/__str__
            reason = decide_once(kind, host, port, proto)
            if reason is not None and refresh():
                reason = decide_once(kind, host, port, proto)
            return reason

        def refresh():
            # Before refusing, look at the allowlist now (two stat calls): the sentinel writes new
            # pins before it releases the DNS answer, so a connect to a just-pinned address must not
            # wait for the reporter's next poll. True when a different allowlist was loaded.
            before = st["rules"]
            try_load(False)
            return st["rules"] is not before

        def decide_once(kind, host, port, proto):
            rules = st["rules"]  # one read: a reload swaps the whole object (and its cache)
            if rules is None:
                return denial(None, kind, host, port, proto)  # fail closed: never cached
            cache = rules["cache"]
            key = (kind, host, port, proto)
            try:
                return cache[key]
            except (KeyError, TypeError):
                pass
            reason = denial(rules, kind, host, port, proto)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            try:
                cache[key] = reason
            except TypeError:
                pass
            return reason

        return denial, decide

    def _address_checks(st, counts, decide, violation):
        # Handlers for connect/sendto/sendmsg and the name and reverse lookups.

        def on_address(event, args):
            sock, address = args[0], _items(args[1])
            if address is None:  # sendmsg on a connected socket: its connect was checked
                return
            family, sock_type = _kind(sock)
            if family in _LOCAL_FAMILIES:
                return
            rules = st["rules"]  # the hook's fast path already looked in rules["allowed"]
            counts["checks"] += 1  # decisions made (fast-path hits are not counted)
            sock_proto = _GS[2](sock)  # (the getters are this socket type's now)
            proto = _sock_proto(sock_type, sock_proto)
            if family not in (_AF_INET, _AF_INET6):
                return violation(event, None, None, None, proto, f"address family {family} leaves")
            if not isinstance(address, tuple) or len(address) < 2:
                return  # CPython rejects it before any packet (the event fires after parsing)
            host, port = _exact(address[0]), _exact(address[1])
            reason = decide("addr", host, port, proto)
            if reason is None and isinstance(host, (str, bytes)) and _packed(host) is None:  # noqa: UP038
                # A name C has resolved unseen (not through the socket.py methods, which pass a
                # checked literal): resolve it again; every address must be allowed. Never
                # remembered (/etc/hosts or DNS may change).
                try:
                    ips = _addresses(host, family)
                except OSError as exc:
                    ips = ()
                    reason = f"cannot check where {_norm_name(host)!r} leads ({exc})"
                for ip in ips:
                    reason = decide("addr", ip, port, proto)
                    if reason is not None:
                        reason = f"{reason} ({_norm_name(host)} resolved to it)"
                        return violation(event, host, ip, port, proto, reason)
                if reason is None:
                    return None
            elif reason is None:
                if type(address) is tuple and _plain(address):
                    remember(rules, (address, sock_type, family, sock_proto))  # the hook's key
            else:
                packed = _packed(host)
                ip = _ip_text(packed) if packed is not None else None
                violation(event, host, ip, port, proto, reason)

        def on_getaddrinfo(event, args):
            rules = st["rules"]  # the hook's fast path already looked in rules["allowed"]
            plain = _plain(args[:2])  # only exact values are remembered (the rest: C ints)
            counts["checks"] += 1
            host, port = _exact(args[0]), _port(_exact(args[1]))
            reason = decide("name", host, port, _proto(args[3] or 0, args[4] or 0))
            if reason is None:
                if plain:
                    remember(rules, args)
            else:
                violation(event, host, None, port, "dns", reason)

        def remember(rules, key):
            # Allowed calls skip the decision next time; bounded, and replaced with the rules.
            if rules is None:
                return
            allowed = rules["allowed"]
            if len(allowed) >= _CACHE_MAX:
                allowed.clear()
            try:
                allowed.add(key)
            except TypeError:
                pass

        def on_name(event, args):
            counts["checks"] += 1
            reason = decide("name", args[0], None, "any")
            if reason is not None:
                violation(event, args[0], None, None, "dns", reason)

        def on_reverse(event, args):
            counts["checks"] += 1
            target = _items(args[0])
            host = target[0] if isinstance(target, tuple) and target else target
            reason = decide("reverse", host, None, "any")
            if reason is not None:
                violation(event, host, None, None, "dns", reason)

        return {
            "socket.connect": on_address,
            "socket.sendto": on_address,
            "socket.sendmsg": on_address,
            "socket.getaddrinfo": on_getaddrinfo,
            "socket.gethostbyname": on_name,
            "socket.gethostbyname_ex": on_name,
            "socket.gethostbyaddr": on_reverse,
            "socket.getnameinfo": on_reverse,
        }, remember

    def _socket_checks(st, enforce, decide, violation, handlers):
        # Handlers for socket creation (AF_PACKET; patching socket.py once it is imported) and
        # bind, and the precheck the patched socket methods run.

        def on_new(event, args):
            # Only until socket.py is patched; then AF_PACKET is caught at bind/sendto instead.
            if args[1] == _AF_PACKET:
                violation(event, None, None, None, "raw", "AF_PACKET sockets bypass the allowlist")
            if enforce and not _patch_socket_module(precheck, literals):
                return  # socket.py is not imported yet (the reporter itself uses _socket)
            st["patched"] = True
            handlers.pop("socket.__new__", None)  # one Python call less on every socket created

        def on_bind(event, args):
            if _kind(args[0])[0] == _AF_PACKET:  # a bound packet socket can send() raw frames
                violation(event, None, None, None, "raw", "AF_PACKET sockets bypass the allowlist")

        literals = set()  # hosts known to be IP literals: the socket wrappers skip precheck

        def precheck(sock, address):
            # Python-level check before CPython resolves a *name* inside connect()/sendto().
            address = _items(address)
            if not isinstance(address, tuple) or len(address) < 2:
                return None
            host = _exact(address[0])
            if not isinstance(host, (str, bytes)):  # noqa: UP038
                return None
            if (
                _packed(host) is not None
            ):  # checked by the audit hook, after parsing, before sending
                if len(literals) < _CACHE_MAX and type(address[0]) is str:
                    literals.add(host)
                return None
            try:
                family, sock_type = _kind(sock)
            except Exception:  # noqa: BLE001
                return None
            if family in (_AF_INET, _AF_INET6):
                proto = _sock_proto(sock_type, _GS[2](sock))
                reason = decide("addr", host, address[1], proto)
                if reason is not None:
                    violation("socket.connect", host, None, address[1], proto, reason)
                # Where the name leads (C would resolve it unseen, e.g. via an /etc/hosts the app
                # rewrote): the first address, checked, is what C gets, as a literal.
                ips = _addresses(host, family)
                for ip in ips:
                    reason = decide("addr", ip, address[1], proto)
                    if reason is not None:
                        reason = f"{reason} ({_norm_name(host)} resolved to it)"
                        violation("socket.connect", host, ip, address[1], proto, reason)
                return (ips[0], *address[1:])
            return None

        return {
            "socket.__new__": on_new,
            "socket.bind": on_bind,
        }, precheck

    def _tamper_check(counts, violation):
        # Audited writes (e.g. `__code__`) to the guard's own functions count and are refused.
        own = set()

        def on_tamper(event, args):
            if id(args[0]) in own:
                counts["tamper"] += 1
                name = args[1] if len(args) > 1 else "?"
                violation(
                    event, None, None, None, "tamper", f"attempt to modify the guard ({name})"
                )

        return {
            "object.__setattr__": on_tamper,
            "object.__delattr__": on_tamper,
        }, own

    def _dispatch(handlers, st):
        # The audit hook. String comparisons serve the hot path without hashing the event name (a
        # new string at every call): a connect/sendto to an address allowed before for the same
        # socket family and type returns at once, and so does socket creation once socket.py is
        # patched; a getaddrinfo allowed before returns at once too. Every other event: one dict
        # lookup, then its handler.
        lookup = handlers.get
        gs = _GS  # the getters, once taken (until then they raise TypeError: the handler decides)
        on_address = handlers["socket.connect"]
        on_getaddrinfo = handlers["socket.getaddrinfo"]

        def hook(event, args):
            if event == "socket.__new__":
                if st["patched"]:
                    return  # nothing to check at creation any more (AF_PACKET: at bind and sendto)
            elif event == "socket.connect" or event == "socket.sendto":
                address = args[1]
                try:  # exact types only: a subclass's __eq__/__hash__ must not match a key
                    if (
                        type(address) is tuple
                        and type(address[0]) is str
                        and type(address[1]) is int
                        and (address, gs[1](args[0]), gs[0](args[0]), gs[2](args[0]))
                        in st["allowed"]
                    ):
                        return
                except (
                    IndexError,
                    TypeError,
                ):  # a short or unhashable address: the handler decides
                    pass
                return on_address(event, args)
            elif event == "socket.getaddrinfo":
                host, port = args[0], args[1]  # family, type, proto, flags: ints made by C
                host_kind, port_kind = type(host), type(port)
                try:  # the same call allowed before (exact host and port types only)
                    if (
                        (host_kind is str or host_kind is bytes or host is None)
                        and (port_kind is int or port_kind is str or port_kind is None)
                        and args in st["allowed"]
                    ):
                        return
                except TypeError:
                    pass
                return on_getaddrinfo(event, args)
            handler = lookup(event)
            if handler is not None:
                handler(event, args)

        return hook

    def _protect(st, own, protected):
        # ids are only unique while the object lives: keep every protected object referenced
        protected += filter(callable, globals().values())
        own.update(map(id, protected))
        st["protected"] = protected

    def _snapshot(st, counts, origin, mode):
        # status(): what this guard is doing (read-only).

        def snapshot():
            rules = st["rules"]
            return {
                "installed": True,
                "origin": origin,
                "mode": mode,
                "fail_closed": rules is None,
                "fail_reason": st["fail_reason"],
                "policy_sha256": rules["policy_sha256"] if rules else None,
                "generation": st["generation"],
                "entries": rules["entries"] if rules else 0,
                "counters": dict(
                    counts,
                    dropped_total=counts["dropped_queue_full"]
                    + counts["dropped_send_failed"]
                    + counts["dropped_at_exit"],
                ),
            }

        return snapshot

    def _announce_fail_closed(st, enforce, base_message, submit):
        if st["rules"] is None:
            if enforce:
                _say(f"FAIL CLOSED: {st['fail_reason']}; non-loopback network calls raise")
            else:
                _say(f"audit mode without an allowlist: {st['fail_reason']}; reporting everything")
            msg = base_message("fail_closed")
            msg.update(reason=st["fail_reason"], enforce=enforce)
            submit(msg)

    def _follow_fork_and_exit(st, queue, reporter):
        # A forked child gets its own pid, an empty queue and a reporter; at exit, drain.

        def after_fork():
            st["pid"] = _getpid()
            del queue[:]
            reporter.start()

        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=after_fork)
        import atexit

        atexit.register(reporter.at_exit)

    def _config(mode_env):
        state = _environ_get("SENTINEL_STATE_DIR") or "/var/lib/sentinel"
        try:
            beat = float(_environ_get("SENTINEL_GUARD_HEARTBEAT") or 5.0)
        except ValueError:
            beat = 5.0
        mode = mode_env if mode_env in ("enforce", "audit") else None
        if mode_env and mode is None:
            _say(f"SENTINEL_GUARD={mode_env!r} is not enforce|audit|off; using enforce")
            mode = "enforce"
        return {
            "mode": mode,
            "policy": _environ_get("SENTINEL_POLICY") or None,
            "allowlist": _environ_get("SENTINEL_GUARD_ALLOWLIST")
            or os.path.join(state, "guard", "allowlist.marshal"),
            "socket": _environ_get("SENTINEL_GUARD_SOCKET") or os.path.join(state, "guard.sock"),
            "heartbeat": max(0.05, beat),
        }

    def _verified(raw, path):
        # The payload of an allowlist.marshal once its format line, its header and the payload's
        # length and check all hold: a truncated or damaged file is refused here, in ~0.1 ms for
        # 10,000 CIDRs, before marshal reads sizes out of it (a flipped byte could make it
        # allocate gigabytes, spend a minute, or yield other rules).
        if not raw.startswith(_MAGIC):
            raise _LoadError(f"allowlist {path} {_format_problem(raw)}")
        start = len(_MAGIC) + _HEADER_LEN
        head = raw[len(_MAGIC) : start]
        if len(head) < _HEADER_LEN:
            raise _LoadError(f"allowlist {path} is truncated ({len(raw)} bytes, in its header)")
        try:
            size, check = int(head[:8], 16), int(head[9:17], 16)
        except ValueError:
            size = check = -1
        if size < 0 or head != b"%08x %08x\n" % (size, check):
            raise _LoadError(f"allowlist {path} is damaged: its header {head!r} is not valid")
        payload = raw[start:]
        if len(payload) != size:
            raise _LoadError(
                f"allowlist {path} is {'truncated' if len(payload) < size else 'damaged'}: "
                f"its header says {size} bytes of rules, it holds {len(payload)}"
            )
        if int.from_bytes(payload, "little") % _CHECK_MOD != check:
            raise _LoadError(
                f"allowlist {path} is damaged: its rules do not match the check in its header"
            )
        return payload

    def _format_problem(raw):
        # Why a file without this guard's format line is refused (the error path only).
        if not raw:
            return "is empty"
        if _MAGIC.startswith(raw):
            return f"is truncated ({len(raw)} bytes, in its first line)"
        if raw.startswith(_MAGIC_FAMILY):
            name = raw[:64].split(b"\n")[0].decode("ascii", "replace")
            return f"is format {name!r}; this guard reads {_FORMAT} (another sentinel version?)"
        if raw[:1] == b"{":
            return f"is JSON (allowlist.json is for people); the guard reads {_FORMAT}"
        return f"has an unknown format (its first line is not {_FORMAT})"

    def _stat_key(path):
        try:
            s = _stat(path)
        except OSError:
            return None
        return (s.st_mtime_ns, s.st_size, s.st_ino)

    def _load(cfg, generation):
        if not cfg["policy"]:
            raise _LoadError("SENTINEL_POLICY is not set")
        try:  # readable, as before; hashed below only if needed (no file object: cheaper at start)
            fd = _open_fd(cfg["policy"], _O_RDONLY)
            try:
                policy_stat = _fstat(fd)
            finally:
                _close_fd(fd)
        except OSError as exc:
            raise _LoadError(f"cannot read policy {cfg['policy']}: {exc.strerror or exc}") from None
        try:
            with open(cfg["allowlist"], "rb") as f:  # no text wrapper: decoded below, at once
                raw = f.read()
        except OSError as exc:
            raise _LoadError(
                f"cannot read allowlist {cfg['allowlist']}: {exc.strerror or exc}"
            ) from None
        payload = _verified(raw, cfg["allowlist"])  # never unmarshal a damaged file
        try:
            doc = _marshal_loads(payload)
        except (ValueError, EOFError, TypeError, MemoryError) as exc:
            raise _LoadError(
                f"allowlist {cfg['allowlist']} is not valid marshal data: {exc}"
            ) from None
        if type(doc) is not dict or doc.get("format") != _FORMAT:
            raise _LoadError(f"allowlist {cfg['allowlist']} holds no {_FORMAT} document")
        # The sentinel records the (size, mtime) of the file it hashed; when the file still has
        # them, hashing it again (8 ms for a 10,000-entry policy) proves nothing new. Else: hash.
        if doc.get("policy_stat") == [policy_stat.st_size, policy_stat.st_mtime_ns]:
            sha = doc.get("policy_sha256")
        else:
            try:
                sha = _policy_sha(cfg["policy"])
            except OSError as exc:
                raise _LoadError(
                    f"cannot read policy {cfg['policy']}: {exc.strerror or exc}"
                ) from None
        if doc.get("policy_sha256") != sha:
            raise _LoadError(
                f"allowlist was compiled from policy sha256 {str(doc.get('policy_sha256'))[:12]}, "
                f"but {cfg['policy']} has sha256 {sha[:12]}"
            )
        try:
            return _compile_rules(doc, generation)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _LoadError(f"allowlist {cfg['allowlist']}: bad entry ({exc})") from None

    def _report_socket():
        # A non-blocking AF_UNIX datagram socket of the real C socket type: the type of a socket
        # the hook saw, else `_socket`'s if it is the C type `_socket.socket`, else the type of
        # `_socket` loaded past sys.modules and sys.meta_path (the app may have hidden it there
        # before the first report: every report would be lost).
        base = _SOCK_TYPE[0] if _SOCK_TYPE else None
        if base is None:
            try:
                cls = getattr(sys.modules.get("_socket") or __import__("_socket"), "socket", None)
                base = _c_socket_type(cls)
            except Exception:  # noqa: BLE001 - hidden, or not a type: load it past the import system
                base = None
            if base is None or not _is_c_socket_type(base):
                base = _c_socket_type(_real_socket_module().socket)
        if base is None or not _is_c_socket_type(base):
            raise OSError("no C socket type in _socket")
        sock = base(_AF_UNIX, 2)  # SOCK_DGRAM
        sock.setblocking(False)
        return sock

    def _is_c_socket_type(kind):
        # A C type's name is set by C code: only `_socket` makes a C type "_socket.socket".
        return _TYPE_GETATTR(kind, "__module__") == "_socket" and (
            _TYPE_GETATTR(kind, "__qualname__") == "socket"
        )

    class _Spec:
        def __init__(self, name, origin):
            self.name, self.origin = name, origin

    def _real_socket_module():
        # `_socket` from the interpreter itself (builtin) or its shared library in lib-dynload.
        if "_socket" in _BUILTIN_NAMES:
            return _create_builtin(_Spec("_socket", None))
        for suffix in _ext_suffixes():
            path = _STDLIB + "/lib-dynload/_socket" + suffix
            try:
                _stat(path)
            except OSError:
                continue
            return _create_dynamic(_Spec("_socket", path))
        raise OSError("no _socket library")

    _GAI = []  # _socket's C getaddrinfo, taken (and checked) at first use

    def _addresses(host, family):
        # The addresses C's connect() gets for a name (getaddrinfo with the socket's family), as
        # literals; a failed lookup raises what C would have raised (socket.gaierror).
        if not _GAI:
            fn = None
            for attempt in (0, 1):  # _socket as imported, else loaded past the import system
                try:
                    if attempt == 0:
                        mod = sys.modules.get("_socket") or __import__("_socket")
                    else:
                        mod = _real_socket_module()
                    fn = mod.getaddrinfo
                except Exception:  # noqa: BLE001 - hidden or broken: the next attempt
                    fn = None
                if not (type(fn) is _C_FUNCTION and fn.__name__ == "getaddrinfo"):
                    fn = None
                elif type(fn.__self__) is _MODULE:
                    break
            if fn is None:
                raise OSError("no C getaddrinfo in _socket")
            _GAI[:] = (fn,)
        out = []
        for entry in _GAI[0](host, None, family):  # (family, type, proto, canonname, sockaddr)
            out.append(entry[4][0])
        if not out:
            raise OSError(f"no address for {host!r}")
        return out

    def _uuid4():
        b = bytearray(_urandom(16))
        b[6] = (b[6] & 0x0F) | 0x40
        b[8] = (b[8] & 0x3F) | 0x80
        h = b.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _stack(limit=12):
        # (the frame that made the call, innermost-last short stack) without linecache.
        frames = []
        f = _getframe(1)
        while f is not None and len(frames) < 64:
            code = f.f_code
            if code.co_filename != _HERE:
                frames.append((code.co_filename, f.f_lineno, code.co_name))
            f = f.f_back
        caller = None
        for kind in ("app", "library"):
            for filename, line, func in frames:
                if _origin(filename) == kind:
                    caller = f"{filename}:{line} in {func}"
                    break
            if caller:
                break
        if caller is None and frames:
            caller = "{}:{} in {}".format(*frames[0])
        short = []
        for fr in reversed(frames[:limit]):
            short.append("{}:{} in {}".format(*fr))
        return caller, short

    def _origin(filename):
        if "site-packages" in filename or "dist-packages" in filename:
            return "library"
        if filename.startswith(_STDLIB) or filename.startswith("<frozen"):
            return "stdlib"
        return "app"

    def _patch_socket_module(precheck, literals):
        # Check names in socket.socket.connect/sendto before CPython resolves them in C.
        #
        # Fast path: an address whose host is a known IP literal goes straight to the C method (the
        # audit hook checks it there); everything else takes one `precheck` call.
        mod = sys.modules.get("socket")
        cls = getattr(mod, "socket", None)
        base = _c_socket_type(cls) if isinstance(cls, type) else None
        if base is None or cls is base:
            return False
        ns = _type_ns(base)  # the C methods themselves, whatever the module's names now hold
        real_connect, real_connect_ex = ns["connect"], ns["connect_ex"]
        real_sendto, real_sendmsg = ns["sendto"], ns["sendmsg"]

        # The fast path is inlined (no extra call): a known literal host goes straight to C.
        def connect(self, address):
            try:
                skip = type(address) is tuple and type(address[0]) is str and address[0] in literals
            except Exception:  # noqa: BLE001 - not a (host, port) tuple: CPython handles it
                skip = True
            if not skip:
                address = precheck(self, address) or address
            return real_connect(self, address)

        def connect_ex(self, address):
            try:
                skip = type(address) is tuple and type(address[0]) is str and address[0] in literals
            except Exception:  # noqa: BLE001
                skip = True
            if not skip:
                address = precheck(self, address) or address
            return real_connect_ex(self, address)

        def sendto(self, *args):
            try:
                address = args[-1]
                skip = type(address) is tuple and type(address[0]) is str and address[0] in literals
            except Exception:  # noqa: BLE001
                skip = True
            if not skip:
                checked = precheck(self, args[-1])
                if checked is not None:
                    args = (*args[:-1], checked)
            return real_sendto(self, *args)

        def sendmsg(self, *args):
            try:
                address = args[3]
                skip = type(address) is tuple and type(address[0]) is str and address[0] in literals
            except Exception:  # noqa: BLE001
                skip = True
            if not skip:
                checked = precheck(self, args[3])
                if checked is not None:
                    args = (*args[:3], checked, *args[4:])
            return real_sendmsg(self, *args)

        for fn in (connect, connect_ex, sendto, sendmsg):
            fn.__qualname__ = f"socket.{fn.__name__}"
            setattr(cls, fn.__name__, fn)
        return True

    class _Reporter:
        # Background thread: drains the queue to the unix socket, heartbeats, reloads.

        def __init__(self, cfg, st, counts, queue, try_load, snapshot, base_message):
            self.cfg, self.st, self.counts, self.queue = cfg, st, counts, queue
            self.try_load, self.snapshot, self.base_message = try_load, snapshot, base_message
            self.sock = None
            self.run_id = 0
            self.reported_drops = 0  # drops already announced in a delivered message

        def start(self):
            self.run_id += 1
            self.sock = None
            self.closing = False
            # orders the reporter's heartbeats against the exit heartbeat; app threads never take it
            # (new after fork: the parent's reporter may have held the old one)
            self.beat_lock = _thread.allocate_lock()
            _thread.start_new_thread(self._loop, (self.run_id,))

        def _loop(self, run_id):
            # boot has just loaded the allowlist, and a process that ends within a tick needs no
            # "running" beat before its "exit" one: the first reload check and beat wait a tick
            next_reload = next_beat = _monotonic() + _TICK
            while run_id == self.run_id:
                try:
                    now = _monotonic()
                    if now >= next_reload:
                        next_reload = now + _RELOAD_EVERY
                        self.try_load(False)
                    self.drain()
                    if now >= next_beat:
                        next_beat = now + self.cfg["heartbeat"]
                        self.heartbeat("running")
                except Exception:  # noqa: BLE001 - the reporter must outlive any single failure
                    self.counts["send_errors"] += 1
                _sleep(_TICK)

        def drain(self):
            # Send what is queued. True when the queue is empty (False: receiver busy, retry).
            queue, counts = self.queue, self.counts
            while queue:
                try:
                    msg = queue.pop(0)
                except IndexError:  # at exit the main thread drains too
                    return True
                total = counts["dropped_queue_full"] + counts["dropped_send_failed"]
                msg["dropped"] = total - self.reported_drops  # drops since the last delivery
                result = self.send(msg)
                if result is True:
                    counts["sent"] += 1
                    self.reported_drops = total
                elif result is None:  # the receiver's queue is full: keep it, try next tick
                    queue.insert(0, msg)
                    return False
                else:  # nobody listens: this report is lost, and counted
                    counts["dropped_send_failed"] += 1
            return True

        def heartbeat(self, state):
            # Send one heartbeat; after the "exit" one, none (so "exit" is always the last).
            if not self.beat_lock.acquire(timeout=0.05):
                return
            try:
                if not self.closing:
                    self.closing = state == "exit"
                    self._beat(state)
            finally:
                self.beat_lock.release()

        def _beat(self, state):
            msg = self.base_message("heartbeat")
            snap = self.snapshot()
            msg.update(
                state=state,
                interval=self.cfg["heartbeat"],
                fail_closed=snap["fail_closed"],
                fail_reason=snap["fail_reason"],
                policy_sha256=snap["policy_sha256"],
                generation=snap["generation"],
                counters=snap["counters"],
                argv0=(getattr(sys, "argv", None) or [""])[0],  # never the arguments: secrets
            )
            for _ in range(
                100 if getattr(self, "exiting", False) else 1
            ):  # at most ~100 ms at exit
                if self.send(msg) is not None:
                    return
                _sleep(0.001)

        def send(self, msg):
            # One non-blocking datagram: True sent, None receiver busy, False nobody listens.
            try:
                if self.sock is None:
                    _stat(self.cfg["socket"])  # no receiver's socket: nobody listens (no _socket)
                    self.sock = _report_socket()
                data = _json_dumps(msg).encode()
                if len(data) > 60000:
                    msg["stack"] = msg.get("stack", [])[-4:]
                    data = _json_dumps(msg).encode()[:60000]
                self.sock.sendto(data, self.cfg["socket"])
                return True
            except BlockingIOError:  # EAGAIN: alive but busy (its datagram queue is full)
                return None
            except Exception:  # noqa: BLE001 - e.g. no socket file; counted as lost, never raised
                self.counts["send_errors"] += 1
                self._reset()  # e.g. the app closed every fd while daemonizing: start afresh
                return False

        def _reset(self):
            sock, self.sock = self.sock, None
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

        def at_exit(self):
            try:
                for _ in range(20):  # bounded: at most ~20 ms of waiting for a busy receiver
                    if self.drain():
                        break
                    _sleep(0.001)
                left = len(self.queue)  # never sent: counted, so the exit heartbeat reports them
                if left:
                    self.counts["dropped_at_exit"] += left
                    del self.queue[:]
                self.exiting = True  # the exit heartbeat waits (bounded) for a busy receiver
                self.heartbeat("exit")
            except Exception:  # noqa: BLE001
                pass
