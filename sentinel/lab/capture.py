"""The lab's live packet view: `sentinel capture --follow` runs beside the workload, reading the
running sentinel's capture feed. Its JSON lines (evidence/capture.jsonl) and pcap (evidence/
capture.pcap, link type 239) are evidence; its counts go into results.json (`lab.capture`).
A capture that cannot run (no scapy: the `capture` extra) is reported, never a lab failure."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

from sentinel.lab.netns import PYTHON


class LabCapture:
    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.proc: subprocess.Popen | None = None
        self.lines = lab.evidence / "capture.jsonl"
        self.pcap = lab.evidence / "capture.pcap"
        self.facts: dict[str, Any] = {}

    def start(self) -> None:
        """Returns once the feed has admitted the capture: every later packet reaches it."""
        exe = str(Path(PYTHON).with_name("sentinel"))
        out = open(self.lines, "w")  # noqa: SIM115 - closed with the lab's files
        self.lab.files.append(out)
        cmd = ("capture", "--follow", "--format", "json", "--pcap", str(self.pcap))
        proc = self.lab.topo.spawn("app", exe, *cmd, env=self.lab.env(), stdout=out)
        first = proc.stderr.readline() if proc.stderr else ""  # ends at exit, if it fails
        if first.startswith("capture: reading"):
            self.proc = proc
        else:
            proc.kill()
            self.facts = {"status": "unavailable", "error": first.strip()[-300:]}

    def stop(self) -> dict[str, Any]:
        """SIGTERM (the capture's orderly stop: summary line, pcap closed), then its counts."""
        if self.proc is None:
            return self.facts
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=5)
        records = [json.loads(x) for x in self.lines.read_text().splitlines() if x.strip()]
        summary = next((r for r in records if r["type"] == "summary"), {})
        return {
            "status": "ok" if code == 0 and summary else f"exit {code}",
            "packets": summary.get("packets"),
            "dropped": summary.get("dropped"),
            "event_ids": len({r["event_id"] for r in records if r.get("event_id")}),
            "lines": self.lines.name,
            "pcap": self.pcap.name,
            "pcap_bytes": self.pcap.stat().st_size if self.pcap.exists() else 0,
        }
