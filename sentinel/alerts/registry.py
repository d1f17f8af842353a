"""Sink kind (as named in the policy) -> class, and building the configured ones."""

from __future__ import annotations

from collections.abc import Mapping

from sentinel.alerts.base import Sink, SinkNotConfigured
from sentinel.alerts.pagerduty import PagerDutySink
from sentinel.alerts.slack import SlackSink
from sentinel.alerts.webhook import WebhookSink
from sentinel.policy.load import AlertSettings

SINK_TYPES: dict[str, type[Sink]] = {
    "slack": SlackSink,
    "pagerduty": PagerDutySink,
    "webhook": WebhookSink,
}


def build_sinks(
    settings: AlertSettings, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Sink], dict[str, str]]:
    """(usable sinks by name, problems by name). A sink with a missing env var is a problem,
    not an exception: the others still alert."""
    sinks: dict[str, Sink] = {}
    problems: dict[str, str] = {}
    for sink_settings in settings.sinks:
        cls = SINK_TYPES.get(sink_settings.kind)
        if cls is None:
            problems[sink_settings.kind] = f"unknown sink kind {sink_settings.kind!r}"
            continue
        try:
            sinks[sink_settings.kind] = cls(sink_settings, environ)
        except SinkNotConfigured as exc:
            problems[sink_settings.kind] = str(exc)
    return sinks, problems
