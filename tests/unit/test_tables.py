"""Every result table whose rows hold arrays or maps (kilobytes a row) is created to read and
merge a few hundred rows at a time: at ClickHouse's defaults a merge of such parts held about
as much memory as the parts themselves."""

from __future__ import annotations

from pathlib import Path

from pipeline.estimators.family import LARGE_ROWS
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink


def test_tables_with_array_or_map_columns_merge_in_small_blocks(chdb_path: Path) -> None:
    sink = ClickHouseSink(f"chdb://{chdb_path}", "large_rows")
    sink.migrate()
    _, rows = sink.query(
        "SELECT DISTINCT table FROM system.columns WHERE database = 'large_rows' "
        "AND match(type, '(^|\\\\W)(Array|Map)\\\\(') AND table IN (SELECT name FROM "
        "system.tables WHERE database = 'large_rows' AND engine LIKE '%MergeTree')"
    )
    large = {r[0] for r in rows}
    _, rows = sink.query(
        "SELECT name, engine_full FROM system.tables WHERE database = 'large_rows' "
        "AND engine LIKE '%MergeTree'"
    )
    settings = LARGE_ROWS.removeprefix("SETTINGS ")
    small_blocks = {name for name, engine in rows if settings in engine}
    assert {"feature_partials", "quality_class_partials", "reference_profiles"} <= large
    assert small_blocks == large


def test_migrate_stores_the_settings_its_views_are_made_with(chdb_path: Path) -> None:
    def activity_step(sink: ClickHouseSink) -> tuple[list, str]:
        _, stored = sink.query("SELECT name, value FROM modelmon_settings FINAL")
        _, ((view,),) = sink.query(
            "SELECT create_table_query FROM system.tables"
            " WHERE database = 'stored_settings' AND name = 'model_activity'"
        )
        return stored, view

    daily = Settings(window="86400")
    ClickHouseSink(f"chdb://{chdb_path}", "stored_settings", daily).migrate()
    stored, view = activity_step(ClickHouseSink(f"chdb://{chdb_path}", "stored_settings"))
    assert stored == [("window", "24h")]
    assert "toIntervalMillisecond(86400000)" in view
    # The next worker to migrate (with other settings) makes the views anew, and says so.
    later = ClickHouseSink(f"chdb://{chdb_path}", "stored_settings", Settings(window="30s"))
    later.migrate()
    stored, view = activity_step(later)
    assert stored == [("window", "30s")]
    assert "toIntervalMillisecond(30000)" in view
    # Calendar windows fill whole days of their zone, of 23 and 25 hours too.
    berlin = Settings(window="day", window_timezone="Europe/Berlin")
    ClickHouseSink(f"chdb://{chdb_path}", "stored_settings", berlin).migrate()
    stored, view = activity_step(later)
    assert stored == [("window", "day Europe/Berlin")]
    assert "toIntervalDay(1)" in view and "Europe/Berlin" in view
