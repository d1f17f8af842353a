"""Offline images for the e2e suite: a cached debootstrap rootfs, cached wheelhouses, pgvector.

Everything slow is cached under CACHE (default /var/cache/sentinel-e2e, env SENTINEL_E2E_CACHE),
keyed by what went into it, so a second run skips debootstrap (~75 s+) and pip download.
The Debian mirror is read from the host's apt sources at run time and never written into the
project. Run by hand: `python tests/e2e/images.py` (prints the cached paths).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

CACHE = pathlib.Path(os.environ.get("SENTINEL_E2E_CACHE", "/var/cache/sentinel-e2e"))
SUITE = "bookworm"
# One rootfs for every image of the suite (sentinel, mem0, postgres, tools).
PACKAGES = (
    "ca-certificates",
    "iproute2",
    "ipset",
    "iptables",
    "nftables",  # the sentinel image: `nft` applies the netdev egress table
    "openssl",
    "postgresql-15",
    "procps",
    "python-is-python3",
    "python3",
    "python3-pip",
)
MEM0_REQUIREMENTS = (
    "mem0ai==2.2.1",
    "psycopg[binary]>=3.1",
    "psycopg-pool>=3.2",
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "ollama>=0.4",
)
ROOT = pathlib.Path(__file__).resolve().parents[2]
PGVECTOR = pathlib.Path(
    os.environ.get("SENTINEL_E2E_PGVECTOR", "")
    or ROOT.parent / "shared/vendor/pgvector-0.8.6.tar.gz"
)


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def mirror() -> str:
    """The host's Debian mirror (first deb URI in its apt sources)."""
    texts = []
    for path in sorted(pathlib.Path("/etc/apt/sources.list.d").glob("*.sources")):
        texts.append(path.read_text())
    for m in re.finditer(r"^URIs:\s*(\S+)", "\n".join(texts), re.M):
        if "security" not in m.group(1):
            return m.group(1)
    legacy = pathlib.Path("/etc/apt/sources.list")
    if legacy.exists():
        for m in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", legacy.read_text(), re.M):
            if "security" not in m.group(1):
                return m.group(1)
    raise RuntimeError("no Debian mirror found in /etc/apt/sources.list{,.d}")


def rootfs_tarball() -> pathlib.Path:
    """The base rootfs tarball, built with debootstrap once per package list."""
    out = CACHE / f"rootfs-{SUITE}-{_key(SUITE, *PACKAGES)}.tar"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="debootstrap-") as tmp:
        rootfs = pathlib.Path(tmp) / "rootfs"
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(rootfs),
                mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        # containers have no route out: no apt sources (apt-get update then succeeds with
        # nothing to fetch, and installing what is already installed is a no-op)
        (rootfs / "etc/apt/sources.list").write_text("")
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        # Debian's python refuses `pip install` outside a venv (PEP 668); images are throwaway
        for marker in (rootfs / "usr/lib").glob("python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        part = out.with_suffix(".tar.part")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(part), "."], check=True)
        part.rename(out)
    return out


def wheelhouse(name: str, requirements: tuple[str, ...]) -> pathlib.Path:
    """Wheels for CPython 3.11 manylinux, downloaded on the host once per requirement list."""
    out = CACHE / f"wheels-{name}-{_key(*requirements)}"
    if out.exists():
        return out
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "-d",
            str(part),
            *requirements,
        ],
        check=True,
    )
    part.rename(out)
    return out


def sentinel_requirements() -> tuple[str, ...]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = project["build-system"]["requires"]
    return (*build, "wheel", *project["project"]["dependencies"])


def pgvector_build() -> pathlib.Path:
    """pgvector built on the host against postgresql-server-dev-15, staged (DESTDIR) once."""
    digest = hashlib.sha256(PGVECTOR.read_bytes()).hexdigest()[:16]
    pg = subprocess.run(["pg_config", "--version"], capture_output=True, text=True, check=True)
    out = CACHE / f"pgvector-{digest}-{_key(pg.stdout.strip())}"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="pgvector-") as tmp:
        subprocess.run(["tar", "-C", tmp, "-xzf", str(PGVECTOR)], check=True)
        (src,) = [p for p in pathlib.Path(tmp).iterdir() if p.is_dir()]
        stage = pathlib.Path(tmp) / "stage"
        make = [
            "make",
            "-C",
            str(src),
            "with_llvm=no",
            "PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config",
        ]
        subprocess.run([*make, "-j2"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            [*make, "install", f"DESTDIR={stage}"], check=True, stdout=subprocess.DEVNULL
        )
        shutil.copytree(stage, out)
    return out


if __name__ == "__main__":
    print(rootfs_tarball())
    print(wheelhouse("sentinel", sentinel_requirements()))
    print(wheelhouse("mem0", MEM0_REQUIREMENTS))
    print(pgvector_build())


STACK = pathlib.Path(__file__).resolve().parent / "stack"
PG_DOCKERFILE = """FROM {base}
COPY pgvector/ /
COPY pg-entrypoint.sh /usr/local/bin/pg-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/pg-entrypoint.sh"]
"""
PY_DOCKERFILE = """FROM {base}
COPY wheels/ /wheels/
ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels PIP_BREAK_SYSTEM_PACKAGES=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
"""
MEM0_DOCKERFILE = """FROM {base}
COPY wheels/ /wheels/
RUN pip install --no-cache-dir --no-index --find-links /wheels --break-system-packages \\
    {reqs} && rm -rf /wheels
WORKDIR /app
COPY mem0_service.py /app/main.py
ENV PYTHONUNBUFFERED=1
"""


def _context(files: dict[str, pathlib.Path | str]) -> tempfile.TemporaryDirectory:
    tmp = tempfile.TemporaryDirectory(prefix="e2e-ctx-")
    for name, src in files.items():
        dst = pathlib.Path(tmp.name) / name
        if isinstance(src, str):
            dst.write_text(src)
        elif src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    return tmp


def build_images(engine) -> dict[str, str]:
    """Every image of the suite, offline; returns {role: tag}. Each build reuses the engine's
    layer cache, so an unchanged image takes about a second."""
    rootfs = rootfs_tarball()
    base = f"sentinel-e2e-rootfs:{rootfs.stem.rsplit('-', 1)[-1]}"
    if engine.docker("image", "inspect", base, check=False).returncode != 0:
        engine.docker("import", str(rootfs), base)
    tags = {"base": base}

    def build(
        tag: str,
        files: dict,
        dockerfile: str | None = None,
        context: str | None = None,
        args: dict | None = None,
    ) -> None:
        argv = ["build", "-q", "-t", tag]
        for k, v in (args or {}).items():
            argv += ["--build-arg", f"{k}={v}"]
        if context is not None:
            engine.docker(*argv, "-f", dockerfile, context)
            return
        with _context(files) as ctx:
            engine.docker(*argv, ctx)

    sw = wheelhouse("sentinel", sentinel_requirements())
    tags["py"] = f"sentinel-e2e-py:{sw.name.rsplit('-', 1)[-1]}"
    build(tags["py"], {"Dockerfile": PY_DOCKERFILE.format(base=base), "wheels": sw})
    # the shipped Dockerfile, unchanged but for its BASE
    build("sentinel:local", {}, str(ROOT / "Dockerfile.sentinel"), str(ROOT), {"BASE": tags["py"]})
    tags["sentinel"] = "sentinel:local"
    mw = wheelhouse("mem0", MEM0_REQUIREMENTS)
    reqs = " ".join(shlex_quote(r) for r in MEM0_REQUIREMENTS)
    build(
        "mem0-fixed:local",
        {
            "Dockerfile": MEM0_DOCKERFILE.format(base=base, reqs=reqs),
            "wheels": mw,
            "mem0_service.py": STACK / "mem0_service.py",
        },
    )
    tags["mem0"] = "mem0-fixed:local"
    build(
        "sentinel-e2e-postgres:local",
        {
            "Dockerfile": PG_DOCKERFILE.format(base=base),
            "pgvector": pgvector_build(),
            "pg-entrypoint.sh": STACK / "pg-entrypoint.sh",
        },
    )
    tags["postgres"] = "sentinel-e2e-postgres:local"
    engine.docker("image", "prune", "-f")  # layers of images rebuilt since: the cache stays lean
    return tags


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)
