"""The only code that knows ClickHouse: tables, migrations, the batched idempotent writer."""
