"""Mergeable, JSON-serialisable estimators, one module per metric family."""
