"""The per-app objects every route needs, built once per app by `WSApp.init_app`."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from .backplane import Backplane
from .hub import Hub
from .metrics import Metrics
from .registry import Registry
from .settings import Settings


@dataclass
class Service:
    settings: Settings
    registry: Registry
    backplane: Backplane
    hub: Hub
    metrics: Metrics


def current_service() -> Service:
    return current_app.extensions["wsapp"].service  # type: ignore[no-any-return]
