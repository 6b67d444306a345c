"""``modelmon``: worker, demo, simulate and query commands.

Settings come from flags, ``MODELMON_*`` environment variables and an optional TOML file
(``--config`` or ``MODELMON_CONFIG``), in that order of precedence; ``modelmon worker --help``
lists every one.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.settings import Settings

SECRET_FLAGS = {"sasl_password"}  # secrets come from the environment or the file only


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
    return Settings.load(file=args.config, overrides=overrides)


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


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.app import run_worker

    run_worker(_settings(args), args.log_level.upper())
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from pipeline.sink.clickhouse import ClickHouseSink

    settings = _settings(args)
    sink = ClickHouseSink(
        settings.clickhouse_dsn, settings.clickhouse_database, settings.window_seconds
    )
    sink.migrate()
    columns, rows = sink.query(args.sql)
    sink.close()
    if args.format == "json":
        sys.stdout.buffer.write(
            orjson.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str) + b"\n"
        )
    else:
        _print_table(columns, rows)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from producers.simulate import simulate

    settings = _settings(args)
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

    settings = _settings(args)
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
        description="Run one SQL statement against the result database. "
        "With the embedded chDB, run it while no worker holds the database.",
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
    except (ValueError, ConnectionError) as exc:
        print(f"modelmon: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
