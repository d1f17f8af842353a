"""Is the app's network namespace still the app's?

In compose the sentinel shares mem0's namespace (`network_mode: service:mem0`). When mem0's
container stops or restarts, Docker gives it a *new* namespace and removes the old one's
interfaces; the sentinel is left alone in the old one (only `lo`), its rules guarding nothing,
while mem0's gate waits (fail-closed) for a sentinel that never comes. The daemon started with
--ready-file watches for that and exits (code 3) so the orchestrator restarts it in the app's
current namespace, where it applies again and the gate opens.
"""

from __future__ import annotations

from pathlib import Path

EXIT_ORPHANED = 3


def links(proc_net_dev: Path = Path("/proc/self/net/dev")) -> set[str]:
    """Interface names of this process's network namespace, loopback excluded."""
    names = set()
    for line in proc_net_dev.read_text().splitlines()[2:]:
        name = line.split(":", 1)[0].strip()
        if name and name != "lo":
            names.add(name)
    return names


class OrphanWatch:
    """Orphaned = the namespace had links when we started and has had none for `checks`
    consecutive checks (a link being replaced does not count)."""

    def __init__(self, checks: int = 2, read=links) -> None:
        self.read, self.checks = read, checks
        self.had_links = bool(read())
        self.empty = 0

    def orphaned(self) -> bool:
        if not self.had_links:
            return False
        self.empty = self.empty + 1 if not self.read() else 0
        return self.empty >= self.checks
