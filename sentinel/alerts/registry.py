"""Sink kind (as named in the policy) -> class, and building the configured ones."""

from __future__ import annotations

from collections.abc import Mapping

from ..policy import AlertSettings
from .base import Sink, SinkNotConfigured
from .pagerduty import PagerDutySink
from .slack import SlackSink
from .webhook import WebhookSink

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
