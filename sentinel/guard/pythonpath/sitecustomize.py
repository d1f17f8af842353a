"""sentinel guard loader: Python imports this at start-up when this directory is on PYTHONPATH.

Python itself treats an exception here as "Error in sitecustomize" and carries on without the
guard, so every error is caught here and turned into a deny-all hook: a broken guard fails
closed, never open. A sitecustomize that this file shadows (e.g. Debian's) still runs.
"""

import sys


def _deny_all_inline(reason):
    """Last resort when sentinel_guard itself cannot be imported."""

    class SecurityError(PermissionError):
        pass

    local = (1, 16)  # AF_UNIX, AF_NETLINK
    import _socket

    family = _socket.socket.family.__get__  # the C getter: a subclass's `family` cannot lie
    pton = _socket.inet_pton  # taken now: the app may rebind the module's names later

    def hook(event, args):
        if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
            if args[1] is None or family(args[0]) in local:
                return
            address = args[1]
            if isinstance(address, tuple):  # its real items, not a subclass's __getitem__
                address = tuple.__getitem__(address, slice(None))
            host = address[0] if isinstance(address, tuple) and address else ""
        elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
            host = args[0]
        else:
            return
        if issubclass(type(host), str):  # an exact copy: a subclass's __eq__/__str__ cannot lie
            host = "".join((host,))
        elif issubclass(type(host), bytes):
            host = b"".join((host,))
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        # a name counts as local only when looked up ("localhost"); C resolves a name in
        # connect() unseen (/etc/hosts may map it anywhere), and "127.x.example" is a name
        if host is None or host == "" or host == "localhost" and event.startswith("socket.get"):
            return
        for af, loop in ((2, b"\x7f"), (10, b"\x00" * 15 + b"\x01")):  # 127/8, ::1
            try:
                if pton(af, host).startswith(loop):
                    return
            except (OSError, TypeError, ValueError):
                pass
        raise SecurityError(13, f"sentinel guard (deny-all): {reason}")

    sys.addaudithook(hook)
    sys.stderr.write(f"sentinel-guard: FAIL CLOSED: {reason}; non-loopback network calls raise\n")


def _chain_shadowed():
    """Run the next sitecustomize on sys.path (the one ours shadows), if there is one."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or ".")
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder == here or not os.path.isfile(candidate):
            continue
        import importlib.util  # only now: it costs a few ms of start-up

        spec = importlib.util.spec_from_file_location("_sentinel_shadowed_sitecustomize", candidate)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return


try:
    import sentinel_guard
except BaseException as _exc:  # noqa: BLE001 - includes SyntaxError, ImportError, anything
    _deny_all_inline(f"cannot import sentinel_guard ({type(_exc).__name__}: {_exc})")
else:
    sentinel_guard.boot("sitecustomize")

try:
    _chain_shadowed()
except Exception as _exc:  # noqa: BLE001 - someone else's sitecustomize: report, keep going
    sys.stderr.write(f"sentinel-guard: shadowed sitecustomize failed: {_exc!r}\n")
