"""Slack incoming webhook: Block Kit message with a plain-text fallback (`text`).

Block Kit limits honoured: header text <= 150 chars (plain_text), section text <= 3000,
section fields <= 10 of <= 2000 each, context elements <= 10. User-supplied strings are escaped
(&, <, >) so an attacker-chosen hostname cannot ping @channel or inject links.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sentinel.alerts.base import Sink, dropped_note
from sentinel.alerts.model import P1, P2, P3, TEST, Alert

EMOJI = {
    P1: ":rotating_light:",
    P2: ":warning:",
    P3: ":information_source:",
    TEST: ":white_check_mark:",
}


class SlackSink(Sink):
    kind = "slack"
    rate: ClassVar[float] = 1.0  # Slack allows about one message per second per webhook
    burst: ClassVar[float] = 1.0

    def __init__(self, settings, environ=None) -> None:
        super().__init__(settings, environ)
        self._url = self.secret("webhook_url")
        self.channel = settings.options.get("channel")

    def payload(self, alert: Alert, dropped: int) -> dict[str, Any]:
        label = "TEST" if alert.severity == TEST else alert.severity
        fallback = f"[{label}] {alert.title}"
        if dropped:
            fallback += f" ({dropped_note(dropped)})"
        fields = [
            ("Severity", alert.severity),
            ("Layer", alert.layer),
            ("Destination", alert.destination),
            ("Process", alert.process),
            ("Count", str(alert.count) + (" (roll-up)" if alert.rollup else "")),
        ]
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": _clip(fallback, 150)}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(f"{EMOJI.get(alert.severity, '')} {_esc(alert.title)}", 3000),
                },
                "fields": [
                    {"type": "mrkdwn", "text": _clip(f"*{k}*\n{_esc(v)}", 2000)}
                    for k, v in fields
                    if v
                ][:10],
            },
        ]
        if dropped:
            blocks.append(
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f":warning: {_esc(dropped_note(dropped))}"},
                }
            )
        blocks.append(
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": _clip(
                            f"correlation id `{alert.correlation_id}` · alert `{alert.id}` · "
                            f"{_esc(self.source)}",
                            2000,
                        ),
                    }
                ],
            }
        )
        payload: dict[str, Any] = {"text": _clip(fallback, 3000), "blocks": blocks}
        if self.channel:
            payload["channel"] = self.channel
        return payload


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
