"""Where monitoring alerts go besides the log and the asset checks: an optional webhook of an on-call route."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
from pydantic import PrivateAttr


@dataclass(frozen=True)
class AlertDelivery:
    """What happened to one alert: sent (with the HTTP status), not configured, or failed (with why)."""

    sent: bool
    detail: str


class AlertRoute(dg.ConfigurableResource):
    """A webhook that receives each alert as JSON (a chat channel, a pager's events API); unset: log and checks only."""

    webhook_url: str | None = None
    timeout_s: float = 5.0

    def send(self, title: str, body: dict[str, object]) -> AlertDelivery:
        if not self.webhook_url:
            return AlertDelivery(False, "no webhook configured (TLP_ALERT_WEBHOOK unset)")
        import httpx

        try:
            response = httpx.post(self.webhook_url, json={"title": title, **body}, timeout=self.timeout_s)
        except httpx.HTTPError as err:  # the caller logs it: the alert still stands in the log and the checks
            return AlertDelivery(False, f"webhook {self.webhook_url} unreachable: {type(err).__name__}: {err}")
        if response.status_code >= 400:
            return AlertDelivery(False, f"webhook {self.webhook_url} answered HTTP {response.status_code}")
        return AlertDelivery(True, f"webhook answered HTTP {response.status_code}")


class RecordingAlertRoute(AlertRoute):
    """The alert route, also keeping the alerts it was asked to send, so a caller can tell what went out."""

    _sent: list[str] = PrivateAttr(default_factory=list)

    def send(self, title: str, body: dict[str, object]) -> AlertDelivery:
        self._sent.append(str(body.get("alert", title)))
        return super().send(title, body)

    @property
    def sent(self) -> list[str]:
        return list(self._sent)
