"""What model servers, label sources, apps and the demo import to publish events."""

from __future__ import annotations

from producers.client import Batcher, Envelope, MonitorClient
from producers.simulate import SimulationSummary, generate, simulate
from producers.sync import SyncMonitorClient

__all__ = [
    "Batcher",
    "Envelope",
    "MonitorClient",
    "SimulationSummary",
    "SyncMonitorClient",
    "generate",
    "simulate",
]
