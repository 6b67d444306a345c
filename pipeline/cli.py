"""``modelmon``: worker, demo, simulate and query commands.

Settings come from flags, ``MODELMON_*`` environment variables and an optional TOML file
(``--config`` or ``MODELMON_CONFIG``), in that order of precedence; ``modelmon worker --help``
lists every one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from pipeline.errors import StartupError
from pipeline.settings import Settings

#: Secrets come from the environment or the file only.
SECRET_FLAGS = {"sasl_password", "query_token"}


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML file with settings (env: MODELMON_CONFIG)")
    group = parser.add_argument_group("settings (each also MODELMON_<NAME> in the environment)")
    for name, default, doc in Settings.docs():
        if name in SECRET_FLAGS:
            continue
        shown = "<secret>" if name == "clickhouse_dsn" else default
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            metavar=type(default).__name__.upper(),
            help=f"{doc} (default: {shown})",
        )


def _settings(args: argparse.Namespace) -> Settings:
    names = {name for name, _, _ in Settings.docs()}
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return Settings.load(file=args.config, flags=overrides)


def _print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if not cells:
        print("(none)")


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.app import run_worker

    run_worker(_settings(args), args.log_level.upper())
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from pipeline.results import ResultReader

    with ResultReader(_settings(args)) as reader:
        columns, rows = reader.query(args.sql)
    if args.format == "json":
        sys.stdout.buffer.write(
            orjson.dumps([dict(zip(columns, r, strict=True)) for r in rows]) + b"\n"
        )
    else:
        _print_table(columns, rows)
    return 0


def _checked(settings: Settings, topics: Sequence[str] | None = None) -> Settings:
    """``settings`` after the start-up topic checks (see :func:`pipeline.startup.check_topics`):
    every topic created if missing, or with ``topics``, those checked to exist."""
    from pipeline.app import all_topics
    from pipeline.startup import check_topics

    if topics is None:
        return asyncio.run(check_topics(settings, all_topics(settings)))
    return asyncio.run(check_topics(settings, topics, create=False))


def _inputs(settings: Settings, *more: str) -> list[str]:
    from schemas.topics import Topics

    topics = Topics(settings.topic_prefix)
    return [topics.predictions, topics.labels, *(getattr(topics, name) for name in more)]


def cmd_simulate(args: argparse.Namespace) -> int:
    from producers.simulate import simulate

    settings = _checked(_settings(args))
    summary = asyncio.run(
        simulate(
            settings.bootstrap_servers,
            events=args.events,
            seed=args.seed,
            topic_prefix=settings.topic_prefix,
            kafka_config=settings.kafka_client_config(),
        )
    )
    print(summary)
    return 0


def cmd_reference_upload(args: argparse.Namespace) -> int:
    from pipeline.reference import upload

    settings = _checked(_settings(args))
    n = asyncio.run(
        upload(
            args.file,
            settings.bootstrap_servers,
            model=args.model,
            model_version=args.model_version,
            name=args.name,
            topic_prefix=settings.topic_prefix,
            kafka_config=settings.kafka_client_config(),
        )
    )
    print(f"published a profile of {n} features as {args.model}/{args.model_version}/{args.name}")
    return 0


def _time_ms(value: str) -> int:
    try:
        return round(float(value) * 1000)
    except ValueError:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError(f"time {value!r} needs a zone (e.g. Z or +00:00)") from None
        return round(parsed.timestamp() * 1000)


def _plan(args: argparse.Namespace, settings: Settings) -> Any:
    from pipeline.replay import Plan

    offsets: dict[tuple[str, int], tuple[int, int | None]] = {}
    for item in filter(None, (args.offsets or "").split(",")):
        try:
            where, span = item.split("=")
            topic, partition = where.split(":")
            first, _, last = span.partition("-")
            kind = {"predictions": "prediction", "labels": "label"}[topic]
            offsets[(kind, int(partition))] = (int(first), int(last) if last else None)
        except (ValueError, KeyError):
            raise ValueError(
                f"--offsets: expected predictions|labels:PARTITION=FIRST-[LAST], got {item!r}"
            ) from None
    if (args.start_time is None) != (args.end_time is None):
        raise ValueError("--start-time and --end-time go together")
    time_range = None
    if args.start_time is not None:
        time_range = (_time_ms(args.start_time), _time_ms(args.end_time))
    partitions = tuple(range(settings.partitions))
    if args.input_partitions:
        given = [p.strip() for p in args.input_partitions.split(",")]
        if not all(p.isdigit() and int(p) < settings.partitions for p in given):
            raise ValueError(
                "--input-partitions: expected comma-separated partitions of the input topics"
                f" (0 to {settings.partitions - 1}), got {args.input_partitions!r}"
            )
        partitions = tuple(int(p) for p in given)
    return Plan(
        partitions,
        tuple(getattr(args, "file", None) or ()),
        time_range,
        offsets,
        getattr(args, "result_set", ""),
        getattr(args, "flush_every", 1000),
    )


def cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.replay import run
    from schemas.topics import Topics

    settings = _settings(args)
    database = f"{settings.clickhouse_database}_{args.result_set}"
    if args.result_set and not re.fullmatch(r"[A-Za-z0-9_]{1,64}", database):
        raise ValueError(
            f"--result-set: letters, digits and _ only, up to a database name of 64, "
            f"got {args.result_set!r}"
        )
    settings = _checked(settings, _inputs(settings, "metrics"))
    if args.result_set:
        print(
            f"replay: rows go to {Topics(settings.topic_prefix).metrics}; a running sink worker"
            f" (topic_prefix {settings.topic_prefix!r}) writes them into database {database}:"
            f' query it, e.g. modelmon query "SELECT * FROM {database}.quality_windows"',
            file=sys.stderr,
        )
    summary = run(
        settings, _plan(args, settings), args.workers, None if args.no_progress else sys.stderr
    )
    print(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.replay import export, locate

    settings = _settings(args)
    settings = _checked(settings, _inputs(settings))
    plan = _plan(args, settings)

    async def go() -> int:
        start, end = await locate(settings, plan, plan.partitions)
        with open(args.out, "w") as out:
            progress = None if args.no_progress else sys.stderr
            return await export(settings, plan.partitions, out, start, end, progress)

    print(f"exported {asyncio.run(go())} messages to {args.out}")
    return 0


def _add_range_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-partitions", help="comma-separated input partitions (default: all)"
    )
    parser.add_argument("--start-time", help="event time (epoch seconds or ISO-8601 with zone)")
    parser.add_argument("--end-time", help="end of the event-time range (exclusive)")
    parser.add_argument(
        "--offsets",
        help="explicit ranges, e.g. predictions:0=100-200,labels:0=50- (last offset exclusive)",
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    return run_demo(events=args.events, data_dir=args.data_dir, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelmon", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser(
        "worker",
        help="run a worker (compute, sink or both)",
        description="Run a Faust worker of the given --role until stopped.",
    )
    _add_settings_flags(worker)
    worker.set_defaults(func=cmd_worker)

    query = sub.add_parser(
        "query",
        help="run SQL against the result database and print it",
        description="Run one read-only SQL statement against the result database: through "
        "the query endpoint of the worker that holds an embedded database, on the database "
        "itself when none does, or on the ClickHouse server. Nothing it runs changes a "
        "table, view, setting or file.",
    )
    query.add_argument("sql", help='e.g. "SELECT * FROM quality_windows ORDER BY window_start"')
    query.add_argument("--format", choices=("table", "json"), default="table")
    _add_settings_flags(query)
    query.set_defaults(func=cmd_query)

    simulate = sub.add_parser(
        "simulate",
        help="produce the demo's traffic to a broker",
        description="Serve a scikit-learn digits classifier and produce its "
        "predictions, then delayed labels, degrading halfway.",
    )
    simulate.add_argument("--events", type=int, default=20_000, help="predictions to produce")
    simulate.add_argument("--seed", type=int, default=0, help="random seed")
    _add_settings_flags(simulate)
    simulate.set_defaults(func=cmd_simulate)

    reference = sub.add_parser("reference", help="manage drift reference profiles")
    ref_sub = reference.add_subparsers(dest="action", required=True)
    upload = ref_sub.add_parser(
        "upload",
        help="profile a CSV/Parquet file and publish it as a model's drift reference",
        description="Summarise every column of the file (numeric or categorical) the way windows "
        "are summarised and publish it; the sink stores it in reference_profiles, and drift of "
        "that model's windows is measured against it from then on.",
    )
    upload.add_argument("file", help="a .csv or .parquet file, one column per feature")
    upload.add_argument("--model", required=True, help="the model the profile belongs to")
    upload.add_argument("--model-version", default="", help="its version (default: '')")
    upload.add_argument("--name", default="default", help="profile name (default: default)")
    _add_settings_flags(upload)
    upload.set_defaults(func=cmd_reference_upload)

    replay = sub.add_parser(
        "replay",
        help="recompute results from historical topics or files",
        description="Fold a range of the predictions and labels topics (or JSON Lines files) "
        "exactly as the live compute stage does, beside the live workers (no consumer group), "
        "and publish the rows for the live sink: into the live tables (replayed windows are "
        "overwritten idempotently) or, with --result-set, into a database of their own.",
    )
    replay.add_argument(
        "--file",
        action="append",
        help="JSON Lines file (from modelmon export, or one event per line "
        "with a 'kind' member); repeatable; default: read the topics",
    )
    _add_range_flags(replay)
    replay.add_argument(
        "--result-set",
        default="",
        help="write to database <clickhouse_database>_<NAME> instead of the live tables",
    )
    replay.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    replay.add_argument(
        "--flush-every",
        type=int,
        default=1000,
        help="messages folded between row emissions (default: 1000)",
    )
    replay.add_argument("--no-progress", action="store_true", help="no progress line")
    _add_settings_flags(replay)
    replay.set_defaults(func=cmd_replay)

    export = sub.add_parser(
        "export",
        help="write a topic range to JSON Lines",
        description="Write the predictions and labels messages of a range, one per line with "
        "kind, partition and offset, for archiving and for modelmon replay --file.",
    )
    export.add_argument("--out", required=True, help="the JSON Lines file to write")
    export.add_argument("--no-progress", action="store_true", help="no progress line")
    _add_range_flags(export)
    _add_settings_flags(export)
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser(
        "demo",
        help="the embedded demo: broker, worker, chDB, traffic, report",
        description="Start an embedded broker, a worker and chDB, send the digits "
        "classifier's traffic, and print per-window quality from ClickHouse.",
    )
    demo.add_argument("--events", type=int, default=20_000, help="predictions to produce")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument(
        "--data-dir",
        default="./modelmon-data/demo",
        help="where the demo keeps chDB (emptied first)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (ValueError, OSError, StartupError) as exc:
        # What a user can fix (a setting, a file, a server, the topics): one line, no traceback.
        print(f"modelmon: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """An error as one line: an OSError of a file by its name and reason, anything else by
    its message, with line breaks folded.

    >>> _one_line(FileNotFoundError(2, "No such file or directory", "x.csv"))
    'x.csv: No such file or directory'
    >>> _one_line(ValueError("first\\n  second"))
    'first second'
    """
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
