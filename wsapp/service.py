"""The per-app objects every route needs, built once by the factory."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from .backplane import Backplane
from .hub import Hub
from .registry import Registry
from .settings import Settings


@dataclass
class Service:
    settings: Settings
    registry: Registry
    backplane: Backplane
    hub: Hub


def current_service() -> Service:
    return current_app.extensions["wsapp"]  # type: ignore[no-any-return]
