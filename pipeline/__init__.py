"""The modelmon pipeline: Faust agents, estimators, windows, the ClickHouse sink and the CLI."""
