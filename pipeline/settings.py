"""The one settings object: defaults < TOML file < ``MODELMON_*`` environment < flags.

Every setting is declared once below with its default, type and meaning; the CLI builds its
flags and ``--help`` from the same declarations. Secrets are never printed.

>>> s = Settings.load(env={"MODELMON_WINDOW": "30s"}, overrides={"partitions": 2})
>>> str(s.window_spec), s.partitions
('30s', 2)
>>> "hunter2" in repr(Settings.load(env={"MODELMON_SASL_PASSWORD": "hunter2"}))
False
"""

from __future__ import annotations

import math
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.windows import WindowSpec

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _setting(default: Any, doc: str, secret: bool = False) -> Any:
    return field(default=default, metadata={"doc": doc, "secret": secret}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """modelmon's configuration; see ``modelmon worker --help`` for every field."""

    bootstrap_servers: str = _setting("127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)")
    topic_prefix: str = _setting("modelmon.", "prefix of every topic name")
    partitions: int = _setting(4, "partitions of the input topics when modelmon creates them")
    group_id: str = _setting("modelmon", "consumer group (and Faust app id) of the workers")
    role: str = _setting("all", "what this worker runs: all, compute or sink")
    clickhouse_dsn: str = _setting(
        "chdb://./modelmon-data/chdb",
        "ClickHouse: chdb:///path for the embedded engine or http(s)://user:pass@host:8123",
        secret=True,
    )
    clickhouse_database: str = _setting("modelmon", "ClickHouse database of the result tables")
    query_listen: str = _setting(
        "127.0.0.1:0",
        "where a worker holding the embedded database answers read-only SQL (host:port; port 0"
        " = a free one, published next to the database; empty = no endpoint)",
    )
    query_token: str = _setting(
        "",
        "token the query endpoint requires (default: a random one per start, published next"
        " to the database; environment or file only)",
        secret=True,
    )
    query_url: str = _setting(
        "",
        "modelmon query: read through this worker's query endpoint (http://host:port, with"
        " query_token) instead of finding the database",
    )
    query_timeout_seconds: float = _setting(
        10.0, "longest a read-only query runs (the embedded sink's writes wait); 0 = no limit"
    )
    query_max_rows: int = _setting(
        100_000, "most rows a read-only query may return (more is an error); 0 = no limit"
    )
    query_max_bytes: int = _setting(
        67_108_864, "most bytes of result a read-only query may return; 0 = no limit"
    )
    query_max_memory_bytes: int = _setting(
        1_073_741_824, "most memory a read-only query may use; 0 = no limit"
    )
    window: str = _setting(
        "60s",
        "tumbling event-time windows: a size (60, 60s, 5m, 1h: aligned to the epoch) or a"
        " calendar unit (hour, day, week from Monday, month) on the clock of window_timezone",
    )
    window_timezone: str = _setting(
        "UTC", "IANA time zone of calendar windows (e.g. Europe/Berlin)"
    )
    family_windows: str = _setting(
        "",
        "windows of their own for some metric families, as family=window pairs"
        " (e.g. classification=day,features=1h); the others use window",
    )
    lateness_seconds: int = _setting(30, "allowed lateness: older events are counted as late")
    label_ttl_seconds: int = _setting(
        3600, "how long past its window a prediction waits for its label (and a label for it)"
    )
    auc_bins: int = _setting(1000, "score histogram bins for ROC AUC (error bound in docs)")
    detectors: str = _setting(
        "adwin,page_hinkley",
        "online drift detectors on each model's score and error streams: any of adwin,"
        " page_hinkley, kswin (comma-separated; empty = none; kswin costs ~0.3 ms per event)",
    )
    drift_profile: str = _setting(
        "default", "name of the uploaded reference profile drift is measured against"
    )
    drift_previous_windows: int = _setting(
        5, "without a profile (or for features it lacks): compare with this many windows before"
    )
    drift_reference_range: str = _setting(
        "",
        "a fixed past event-time range as the reference instead of the previous windows:"
        " START/END, each epoch seconds or ISO-8601 with a zone",
    )
    drift_correction: str = _setting(
        "bh", "multiple-testing correction of drift p-values: bh, bonferroni or none"
    )
    drift_decide_by: str = _setting(
        "psi",
        "effect sizes that decide drift (comma-separated: psi, jensen_shannon,"
        " wasserstein_normalised); every statistic is reported either way",
    )
    drift_min_count: int = _setting(100, "windows with fewer values of a feature are not flagged")
    max_models: int = _setting(
        1000, "models per window and partition; predictions of more are counted, not folded"
    )
    max_segments: int = _setting(
        1000, "segments per model and window; more are folded into segment __overflow__"
    )
    max_clients: int = _setting(
        100,
        "client ids tracked per model, segment, window and partition; more are folded into"
        " client __overflow__ (0 = no per-client rows)",
    )
    flush_interval_seconds: float = _setting(1.0, "how often changed windows are emitted")
    flush_events: int = _setting(
        10_000,
        "input events after which changed windows are emitted before flush_interval_seconds"
        " passed (those that can still gain predictions wait for the timer): bounds the"
        " compute's memory when it catches up on a backlog",
    )
    max_message_bytes: int = _setting(1_048_576, "larger input messages go to the dead letters")
    max_future_seconds: float = _setting(
        3600.0,
        "an event whose ts is more than this after the Kafka timestamp of its message is"
        " dead-lettered (future_timestamp) instead of moving its partition's watermark",
    )
    sink_batch_messages: int = _setting(100, "metrics messages per ClickHouse insert, at most")
    sink_batch_seconds: float = _setting(1.0, "longest wait before a partial sink batch is written")
    derive_interval_seconds: float = _setting(
        5.0,
        "longest a window's drift, data-quality and client-activity rows lag its partials while"
        " input flows (derived at once when it pauses); each derive covers every window"
        " changed since the last",
    )
    sink_insert_bytes: int = _setting(
        8_388_608,
        "metrics bytes a sink decodes and inserts at once (a batch is inserted in such parts"
        " and derived once): bounds the sink's memory when it catches up",
    )
    data_dir: str = _setting("./modelmon-data", "local directory for worker state files")
    idle_exit_seconds: float = _setting(
        0.0, "stop the worker after this long with no input and nothing unwritten (0 = never)"
    )
    connect_timeout_seconds: float = _setting(
        20.0,
        "how long a command waits at start for Kafka (and a ClickHouse server) to answer"
        " before it stops with an error",
    )
    session_timeout_seconds: float = _setting(10.0, "Kafka consumer-group session timeout")
    heartbeat_interval_seconds: float = _setting(3.0, "Kafka consumer-group heartbeat interval")
    rebalance_timeout_seconds: float = _setting(60.0, "Kafka consumer-group rebalance timeout")
    security_protocol: str = _setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = _setting("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str = _setting("", "SASL user name")
    sasl_password: str = _setting("", "SASL password (environment or file only)", secret=True)
    ssl_cafile: str = _setting("", "CA bundle that signs the brokers' certificates")
    ssl_certfile: str = _setting("", "client certificate (mutual TLS)")
    ssl_keyfile: str = _setting("", "client private key (mutual TLS)")

    def __post_init__(self) -> None:
        if self.security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(
                "security_protocol: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, "
                f"got {self.security_protocol!r}"
            )
        if self.sasl_mechanism not in ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ValueError(
                "sasl_mechanism: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, "
                f"got {self.sasl_mechanism!r}"
            )
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile")
        if self.role not in ("all", "compute", "sink"):
            raise ValueError(f"role: expected all, compute or sink, got {self.role!r}")
        if not _IDENTIFIER.match(self.clickhouse_database):
            raise ValueError(
                f"clickhouse_database: not a plain identifier: {self.clickhouse_database!r}"
            )
        for name in (
            "partitions",
            "auc_bins",
            "flush_events",
            "sink_batch_messages",
            "sink_insert_bytes",
            "max_models",
            "max_segments",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_clients < 0:
            raise ValueError(f"max_clients: must be >= 0, got {self.max_clients}")
        from pipeline.estimators.detectors import DETECTORS

        unknown = set(self.detector_names) - set(DETECTORS)
        if unknown:
            raise ValueError(f"detectors: unknown {sorted(unknown)}; known: {sorted(DETECTORS)}")
        from pipeline.estimators.drift import METHODS

        effects = {m.name for m in METHODS.values() if m.kind == "effect" and m.threshold}
        if not set(self.drift_deciders) <= effects:
            raise ValueError(f"drift_decide_by: expected some of {sorted(effects)}")
        self.drift_reference_range_ms  # noqa: B018 - validates the range
        if self.drift_correction not in ("bh", "bonferroni", "none"):
            raise ValueError(
                f"drift_correction: expected bh, bonferroni or none, got {self.drift_correction!r}"
            )
        for name in ("flush_interval_seconds", "sink_batch_seconds", "connect_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.derive_interval_seconds < 0:
            raise ValueError("derive_interval_seconds: must be >= 0 (0 = after every batch)")
        if 0 < self.idle_exit_seconds <= self.flush_interval_seconds:
            raise ValueError(
                "idle_exit_seconds: must be longer than flush_interval_seconds, or a sink "
                "worker stops between two flushes of the compute worker"
            )
        if not self.max_future_seconds >= 0:
            raise ValueError(f"max_future_seconds: must be >= 0, got {self.max_future_seconds}")
        self.window_spec  # noqa: B018 - validates the windows
        self.family_window_specs  # noqa: B018
        if self.lateness_seconds < 0 or self.label_ttl_seconds < 0:
            raise ValueError("lateness_seconds and label_ttl_seconds must be >= 0")

    @classmethod
    def load(
        cls,
        file: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        flags: Mapping[str, str | None] | None = None,
    ) -> Settings:
        """Defaults, then the TOML ``file`` (or ``MODELMON_CONFIG``), then ``MODELMON_<NAME>``
        variables, then command-line ``flags`` (text), then ``overrides`` (typed values, or
        text); None values are ignored. Each value must have its setting's type: text is
        parsed strictly, a typed value is never converted (``true`` is no int, ``45.9`` no
        int, a list no str), and an error names where the value came from."""
        env = os.environ if env is None else env
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        if not file and env.get("MODELMON_CONFIG"):
            file = env["MODELMON_CONFIG"]
            where = f"config file {file} (MODELMON_CONFIG)"
        else:
            where = f"config file {file}"
        if file:
            unknown = set(table := _read_toml(file, where)) - set(known)
            if unknown:
                raise ValueError(f"{where}: unknown settings: {', '.join(sorted(unknown))}")
            for name, value in table.items():
                values[name] = _typed(known[name], value, f"{where}: {name}")
        for name, f in known.items():
            var = "MODELMON_" + name.upper()
            if var in env:
                values[name] = _parsed(f, env[var], var)
        given = [(k, v, "--" + k.replace("_", "-")) for k, v in (flags or {}).items()]
        given += [(k, v, k) for k, v in (overrides or {}).items()]
        unknown = {k for k, _, _ in given} - set(known)
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        for name, value, label in given:
            if isinstance(value, str):
                values[name] = _parsed(known[name], value, label)
            elif value is not None:
                values[name] = _typed(known[name], value, label)
        return cls(**values)

    @property
    def drift_reference_range_ms(self) -> tuple[int, int] | None:
        """``drift_reference_range`` as epoch milliseconds [start, end), or None."""
        if not self.drift_reference_range:
            return None
        try:
            start, end = (_epoch_ms(t) for t in self.drift_reference_range.split("/"))
        except ValueError:
            raise ValueError(
                f"drift_reference_range: expected START/END, got {self.drift_reference_range!r}"
            ) from None
        if start >= end:
            raise ValueError("drift_reference_range: START must be before END")
        return start, end

    @property
    def window_spec(self) -> WindowSpec:
        """``window`` (and ``window_timezone`` for calendar windows) as a WindowSpec."""
        return _window_spec("window", self.window, self.window_timezone)

    @property
    def family_window_specs(self) -> dict[str, WindowSpec]:
        """The families ``family_windows`` gives windows of their own."""
        from pipeline.estimators.registry import FAMILIES

        known = {f.name for f in FAMILIES}
        out: dict[str, WindowSpec] = {}
        for item in filter(None, (i.strip() for i in self.family_windows.split(","))):
            name, eq, text = item.partition("=")
            if not eq or name.strip() not in known:
                raise ValueError(
                    f"family_windows: expected family=window pairs of the families"
                    f" {sorted(known)}, got {item!r}"
                )
            out[name.strip()] = _window_spec("family_windows", text.strip(), self.window_timezone)
        return out

    @property
    def drift_deciders(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.drift_decide_by.split(",") if n.strip())

    @property
    def detector_names(self) -> tuple[str, ...]:
        return tuple(n.strip() for n in self.detectors.split(",") if n.strip())

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def kafka_client_config(self) -> dict[str, Any]:
        """Security settings in aiokafka's names, for producers, consumers and admin clients."""
        config: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile or None)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile or None)
            config["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            config.update(
                sasl_mechanism=self.sasl_mechanism or "PLAIN",
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return config

    @staticmethod
    def docs() -> list[tuple[str, Any, str]]:
        """(name, default, doc) of every setting, for ``--help`` and the README."""
        return [(f.name, f.default, f.metadata["doc"]) for f in fields(Settings)]


def _window_spec(setting: str, text: str, zone: str) -> WindowSpec:
    try:
        spec = WindowSpec.parse(text)
        return WindowSpec.parse(text, tz=zone) if spec.is_calendar else spec
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None


def _epoch_ms(text: str) -> int:
    """Epoch seconds or an ISO-8601 time with a zone, as epoch milliseconds."""
    try:
        return round(float(text) * 1000)
    except ValueError:
        parsed = datetime.fromisoformat(text.strip())
        if parsed.tzinfo is None:
            raise ValueError(f"{text!r} needs a zone") from None
        return round(parsed.timestamp() * 1000)


def _read_toml(file: str | Path, where: str) -> dict[str, Any]:
    try:
        with open(file, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not valid TOML: {exc}") from None


def _shown(f: Any, value: Any) -> str:
    """``value`` for an error message, with its type unless it is text; a secret only by
    its type."""
    kind = type(value).__name__
    if f.metadata["secret"]:
        return f"a secret of type {kind}"
    return repr(value) if isinstance(value, str) else f"{kind} {value!r}"


def _typed(f: Any, value: Any, where: str) -> Any:
    """A typed value (from TOML or Python) checked against the setting's type, unconverted
    but for an int given for a float."""
    kind = f.type
    ok = (
        (kind == "int" and type(value) is int)
        or (kind == "float" and type(value) in (int, float) and math.isfinite(value))
        or (kind == "str" and isinstance(value, str))
    )
    if not ok:
        raise ValueError(f"{where}: expected {_KINDS[kind]}, got {_shown(f, value)}")
    return float(value) if kind == "float" else value


def _parsed(f: Any, text: str, where: str) -> Any:
    """A setting's value parsed strictly from text (the environment, a flag).

    >>> from dataclasses import fields
    >>> lateness = next(f for f in fields(Settings) if f.name == "lateness_seconds")
    >>> _parsed(lateness, " 30 ", "MODELMON_LATENESS_SECONDS")
    30
    >>> _parsed(lateness, "30.5", "MODELMON_LATENESS_SECONDS")
    Traceback (most recent call last):
    ValueError: MODELMON_LATENESS_SECONDS: expected int (a whole number), got '30.5'
    """
    kind = f.type
    if kind == "str":
        return text
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value):
        raise ValueError(f"{where}: expected {_KINDS[kind]}, got {_shown(f, text)}")
    return value


_KINDS = {"int": "int (a whole number)", "float": "float (a finite number)", "str": "str (text)"}
