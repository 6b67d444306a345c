"""The worker's process settings: a monitor without per-message statistics, and a garbage
collector set for a long-running process."""

from __future__ import annotations

import gc

import faust
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from pipeline.app import GC_YOUNG_THRESHOLD, QuietMonitor, tune_gc

TP0 = TP("bc.predictions", 0)


def test_the_monitor_counts_no_messages_but_still_tracks_offsets(app: faust.App) -> None:
    monitor = app.monitor
    assert isinstance(monitor, QuietMonitor)
    message = ConsumerMessage(TP0.topic, 0, 3, 0.0, 0, [], None, b"{}", None)
    monitor.on_message_in(TP0, 3, message)
    monitor.on_message_out(TP0, 3, message)
    assert monitor.messages_received_total == 0
    assert TP0 not in monitor.tp_read_offsets

    monitor.track_tp_end_offset(TP0, 9)
    monitor.on_tp_commit({TP0: 4})
    assert monitor.tp_end_offsets[TP0] == 9
    assert monitor.tp_committed_offsets[TP0] == 4


def test_tune_gc_freezes_what_exists_and_collects_the_young_rarely() -> None:
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
