"""The per-app objects every route needs, built once per app by `WSApp.init_app`: what
the layers below `extension.py` are handed instead of the `WSApp` itself."""

from __future__ import annotations

from dataclasses import dataclass

from .backplane import Backplane
from .hooks import AppHooks
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
    hooks: AppHooks
