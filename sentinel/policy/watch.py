"""Notice when the policy file's content changes, however it was replaced.

Editors write a temp file and rename it over the policy; Kubernetes mounts a ConfigMap as
`policy.yaml -> ..data/policy.yaml` and updates it by swapping the `..data` symlink. Neither
touches the inode we would watch, so we watch the directories (the given path's and its
resolved target's) for any event and then compare the content hash of what the path now
points to. A slow poll backs watchdog up (events can be lost when the inotify queue overflows).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from sentinel.log import get_logger

DEBOUNCE = 0.1  # editors emit several events per save; one reload after they settle
log = get_logger("watch")


def content_hash(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None  # mid-swap or deleted: not a change yet


class PolicyWatcher(FileSystemEventHandler):
    def __init__(self, path: Path, on_change: Callable[[], None], poll: float = 2.0) -> None:
        self.path = Path(path)
        self.on_change, self.poll_interval = on_change, poll
        self._missing = False
        self.seen = content_hash(self.path)
        self._observer = Observer()
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, daemon=True, name="policy-poll")

    def start(self) -> None:
        dirs = {self.path.parent.resolve(), Path(os.path.realpath(self.path)).parent}
        for directory in dirs:
            self._observer.schedule(self, str(directory), recursive=False)
        self._observer.start()
        self._poller.start()
        log.info("policy_watch", path=str(self.path), dirs=sorted(map(str, dirs)))

    def stop(self) -> None:
        self._stop.set()
        if self._timer:
            self._timer.cancel()
        self._observer.stop()
        self._observer.join(timeout=5)
        self._poller.join(timeout=5)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (ours included) are not changes
        with self._lock:
            if self._timer:
                self._timer.cancel()
            self._timer = threading.Timer(DEBOUNCE, self.check)
            self._timer.daemon = True
            self._timer.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            self.check()

    def check(self) -> None:
        """Call on_change once per new content (never for a vanished or unchanged file)."""
        with self._lock:
            digest = content_hash(self.path)
            if digest is None and not self._missing:  # say so once: the old policy stays
                log.warning("policy_missing", path=str(self.path), kept=self.seen)
            self._missing = digest is None
            if digest is None or digest == self.seen:
                return
            self.seen = digest
        try:
            self.on_change()
        except Exception:  # noqa: BLE001 - a failed reload must not kill the watcher
            log.exception("reload_failed")
