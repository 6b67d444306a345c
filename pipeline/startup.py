"""What a command checks before it starts, so that a problem of its surroundings stops it at
once with one clear line (see :mod:`pipeline.errors`) instead of retries without end or a
crash on the first input: the data directory, the topics and their partition counts, and
the result database.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from clickhouse_connect.driver.exceptions import ClickHouseError

from pipeline.errors import QuietLog, StartupError
from pipeline.kafka import TopicAdmin
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink, first_line, redact, scrub
from schemas.topics import Topics

log = logging.getLogger(__name__)


def faust_datadir(settings: Settings) -> str:
    """Where Faust keeps its files: a directory in ``data_dir``."""
    return os.path.join(settings.data_dir, "faust")


def prepare_data_dir(settings: Settings) -> None:
    """Create ``data_dir`` and Faust's directory in it (Faust creates only the last part)."""
    try:
        Path(faust_datadir(settings)).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"data_dir: cannot create {exc.filename or settings.data_dir}: {exc.strerror or exc}"
        ) from None


async def check_topics(settings: Settings, topics: Iterable[str], create: bool = True) -> Settings:
    """Check (and with ``create``, create) ``topics`` and return ``settings`` with
    ``partitions`` set to the predictions topic's actual count, which the compute stage
    routes events by.

    Predictions and labels must have the same count (the join is per partition): when they
    differ, nothing is created and StartupError says so. A missing topic is created with the
    count the input topics have, or ``partitions`` when neither exists yet.
    """
    names = Topics(settings.topic_prefix)
    inputs = (names.predictions, names.labels)
    async with TopicAdmin(
        settings.bootstrap_servers, settings.kafka_client_config(), settings.connect_timeout_seconds
    ) as admin:
        existing = await admin.partitions()
        counts = {t: existing[t] for t in inputs if t in existing}
        if len(set(counts.values())) > 1:
            (small, n_small), (large, n_large) = sorted(counts.items(), key=lambda kv: kv[1])
            raise StartupError(
                f"topic {large} has {n_large} partitions and {small} has {n_small}: predictions"
                " and labels must have the same number (a prediction joins its label within"
                f" one partition); give {small} {n_large} partitions (kafka-topics.sh --alter"
                f" --topic {small} --partitions {n_large}) or recreate both with one count"
            )
        wanted = list(topics)
        if create:
            n = next(iter(counts.values()), settings.partitions)
            existing |= await admin.create({t: existing.get(t, n) for t in wanted})
        elif missing := [t for t in wanted if t not in existing]:
            raise StartupError(
                f"topics {', '.join(missing)} do not exist on {settings.bootstrap_servers}"
                " (start a worker with this topic_prefix first, which creates them)"
            )
    actual = existing.get(names.predictions, settings.partitions)
    if actual != settings.partitions:
        log.info(
            "%s has %d partitions (partitions setting: %d): running with %d",
            names.predictions,
            actual,
            settings.partitions,
            actual,
        )
        settings = settings.with_(partitions=actual)
    return settings


def open_sink(settings: Settings) -> ClickHouseSink:
    """The result database, opened and migrated: a path that cannot be written, a server
    that cannot be reached or refuses the credentials or the tables raise ConnectionError
    (without the password)."""
    dsn = settings.clickhouse_dsn
    with QuietLog("clickhouse_connect", "urllib3"):  # the error says what they would log
        sink = ClickHouseSink(
            dsn,
            settings.clickhouse_database,
            settings,
            connect_timeout=settings.connect_timeout_seconds,
        )
        try:
            sink.migrate()
        except ClickHouseError as exc:
            sink.close()
            reason = scrub(first_line(str(exc)), dsn)
            raise ConnectionError(
                f"ClickHouse at {redact(dsn)} refused the result tables: {reason}"
            ) from None
    return sink
