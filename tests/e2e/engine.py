"""A real Docker engine inside a network namespace of the suite's own (never the root one).

dockerd runs under `ip netns exec NS` through a small wrapper that mounts the cgroup
hierarchies again (ip netns exec remounts /sys, which hides them). Its sockets, pidfile and
exec-root live in a temporary directory; its data-root is a cache (image layers survive between
runs, containers, networks and volumes never do). Every address it hands out is in
198.18.0.0/15. `Engine.stop()` stops it by the pid in its pidfile and deletes the namespace.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

from e2e import images

BIP = "198.18.0.1/24"
POOL = "base=198.18.128.0/17,size=24"
# the suite's own upstream DNS server: an address on the engine namespace's loopback
DNS_ADDR = "198.18.1.53"


def docker_binary() -> str:
    """Debian's client (same release as its dockerd) before any other on PATH."""
    return (
        "/usr/bin/docker"
        if os.path.exists("/usr/bin/docker")
        else shutil.which("docker") or "docker"
    )


def cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(fstype, options, mountpoint) of every cgroup hierarchy under /sys/fs/cgroup."""
    out = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        point = fields[4]
        if not point.startswith("/sys/fs/cgroup/"):
            continue
        opts = [
            o for o in tail[2].split(",") if o not in ("rw", "ro") and not o.startswith("seclabel")
        ]
        out.append((tail[0], ",".join(opts), point))
    return out


def wrapper_script(mounts: list[tuple[str, str, str]], argv: list[str]) -> str:
    lines = ["#!/bin/sh", "set -e", "mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup"]
    for fstype, opts, point in mounts:
        lines.append(f"mkdir -p {shlex.quote(point)}")
        o = f"-o {shlex.quote(opts)} " if opts else ""
        lines.append(f"mount -t {fstype} {o}{fstype} {shlex.quote(point)}")
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    return "\n".join(lines) + "\n"


class EngineError(RuntimeError):
    pass


class Engine:
    def __init__(self, data_root: pathlib.Path | None = None) -> None:
        self.ns = f"sent-e2e-{uuid.uuid4().hex[:8]}"
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="sentinel-e2e-"))
        self.data_root = data_root or images.CACHE / "docker"
        self.sock = self.tmp / "docker.sock"
        self.pidfile = self.tmp / "docker.pid"
        self.log = self.tmp / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.sock}"}
        self.env.pop("DOCKER_CONTEXT", None)
        self.ns_created = False

    @classmethod
    def attach(cls, ns: str, sock: pathlib.Path) -> Engine:
        """An engine someone else started (and will stop)."""
        eng = cls.__new__(cls)
        eng.ns, eng.sock = ns, sock
        eng.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
        eng.env.pop("DOCKER_CONTEXT", None)
        eng.ns_created, eng.proc = False, None
        return eng

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Engine:
        for tool in ("dockerd", "containerd", "runc", "ip"):
            if not shutil.which(tool):
                raise EngineError(f"needs {tool} (docker.io)")
        subprocess.run(["ip", "netns", "add", self.ns], check=True)
        self.ns_created = True
        self.netns_run(["ip", "link", "set", "lo", "up"])
        self.netns_run(["ip", "addr", "add", f"{DNS_ADDR}/32", "dev", "lo"])
        self.data_root.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("dockerd"),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.tmp / "exec"),
            "-H",
            f"unix://{self.sock}",
            "--pidfile",
            str(self.pidfile),
            "--bip",
            BIP,
            "--default-address-pool",
            POOL,
            "--dns",
            DNS_ADDR,
            "--storage-driver",
            "overlay2",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
            "--containerd-namespace",
            f"e2e-{self.ns}",
            "--containerd-plugins-namespace",
            f"e2e-p-{self.ns}",
        ]
        mounts = cgroup_mounts(pathlib.Path("/proc/1/mountinfo").read_text())
        wrapper = self.tmp / "dockerd-wrapper.sh"
        wrapper.write_text(wrapper_script(mounts, argv))
        wrapper.chmod(0o755)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.ns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "slave",
                    str(wrapper),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"dockerd exited {self.proc.returncode}: {self.log_tail()}")
            if self.sock.exists() and self.docker("info", check=False).returncode == 0:
                return self
            time.sleep(0.5)
        raise EngineError(f"dockerd not up in {timeout:.0f} s: {self.log_tail()}")

    def stop(self) -> None:
        try:
            pid = self._pid()
            if pid:
                os.kill(pid, signal.SIGTERM)
                self._wait_gone(pid, 20) or os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, 10)
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        finally:
            self._unmount_exec_root()
            if self.ns_created:
                subprocess.run(["ip", "netns", "delete", self.ns], check=False)
                self.ns_created = False
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _wait_gone(pid: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        return False

    def _unmount_exec_root(self) -> None:
        # mounts made inside the private mount namespace die with it; nothing else to undo, but
        # a netns bind mount of a container may linger in our namespace's view: lazily drop it
        for line in pathlib.Path("/proc/self/mounts").read_text().splitlines():
            point = line.split()[1]
            if point.startswith(str(self.tmp)):
                subprocess.run(["umount", "-l", point], check=False)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- helpers ---------------------------------------------------------------------------
    def netns_run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("check", True)
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], **kw)

    def docker(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        proc = subprocess.run([docker_binary(), *args], env=self.env, **kw)
        if check and proc.returncode != 0:
            raise EngineError(f"docker {' '.join(args)}: {proc.stderr or proc.stdout}")
        return proc

    def clean(self) -> None:
        """Remove every container, network and volume left in the data-root by an earlier run."""
        ids = self.docker("ps", "-aq").stdout.split()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        self.docker("network", "prune", "-f")
        self.docker("volume", "prune", "-f")
