"""The benchmark suite: modelmon against the raw-consume limit, a per-event Faust + River
baseline and a batch peer (Evidently), on one seeded event set. ``python -m bench.run``."""
