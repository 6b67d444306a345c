"""Secrets stay secret: the SASL password and the ClickHouse DSN's password appear in no repr,
no ``--help``, no connection error and no retry log line."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import traceback

import pytest

from pipeline.agents.sink import SinkRuntime
from pipeline.app import _credentials
from pipeline.cli import build_parser
from pipeline.settings import Settings
from pipeline.sink.clickhouse import ClickHouseSink
from schemas.topics import Topics

SASL_PASSWORD = "sasl-hunter2-Xq9"
CH_PASSWORD = "s3cr3t"
DSN = f"http://user:{CH_PASSWORD}@127.0.0.1:1/db"  # nothing listens on port 1
SECRETS = (SASL_PASSWORD, CH_PASSWORD)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in: {text[:2000]}"


def settings(dsn: str = DSN) -> Settings:
    return Settings.load(
        env={
            "MODELMON_SASL_PASSWORD": SASL_PASSWORD,
            "MODELMON_CLICKHOUSE_DSN": dsn,
            "MODELMON_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "MODELMON_SASL_USERNAME": "svc",
        }
    )


def test_settings_repr_and_str_hide_both_passwords() -> None:
    s = settings()
    assert s.sasl_password == SASL_PASSWORD and s.clickhouse_dsn == DSN  # loaded, just hidden
    for text in (repr(s), str(s), repr(s.with_(window="30s")), repr(Settings.docs())):
        assert_no_secret(text)
    assert_no_secret(repr(_credentials(s)))  # what Faust may print of the broker credentials


def test_settings_errors_do_not_echo_secrets() -> None:
    env = {"MODELMON_SASL_PASSWORD": SASL_PASSWORD, "MODELMON_CLICKHOUSE_DSN": DSN}
    for bad in ({"role": "boss"}, {"partitions": "many"}, {"clickhouse_database": "x;y"}):
        with pytest.raises(ValueError) as info:
            Settings.load(env=env, overrides=bad)
        assert_no_secret(str(info.value))


def test_worker_help_shows_no_secret_and_takes_no_password_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--help"])
    text = capsys.readouterr().out
    assert "--clickhouse-dsn" in text and "<secret>" in text
    assert "--sasl-password" not in text  # secrets come from the environment or a file only
    assert_no_secret(text)


def test_worker_help_in_a_process_with_secrets_in_its_environment() -> None:
    env = dict(os.environ, MODELMON_SASL_PASSWORD=SASL_PASSWORD, MODELMON_CLICKHOUSE_DSN=DSN)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    assert "--clickhouse-dsn" in out.stdout
    assert_no_secret(out.stdout + out.stderr)


@pytest.mark.parametrize(
    "dsn",
    [
        DSN,
        f"https://user:{CH_PASSWORD}@127.0.0.1:1/db",
        f"http://user:{CH_PASSWORD}@127.0.0.1:1",
        f"http://:{CH_PASSWORD}@[::1]:1/db",
        f"http://user:{CH_PASSWORD}%40x@127.0.0.1:1/db",  # percent-encoded
        f"http://user:{CH_PASSWORD}@x@127.0.0.1:1/db",  # an unencoded '@'
        f"http://user:{CH_PASSWORD}/x@127.0.0.1:1/db",  # an unencoded '/'
        f"http://user:{CH_PASSWORD}?x@127.0.0.1:1/db",  # an unencoded '?'
    ],
)
def test_connection_error_names_the_server_without_its_password(dsn: str) -> None:
    with pytest.raises(ConnectionError) as info:
        ClickHouseSink(dsn, "modelmon")
    message = str(info.value)
    assert "127.0.0.1" in message or "::1" in message
    assert CH_PASSWORD not in message, message
    assert CH_PASSWORD not in "".join(traceback.format_exception(info.value))


def test_cli_error_on_an_unreachable_clickhouse_hides_the_password() -> None:
    env = dict(os.environ, MODELMON_CLICKHOUSE_DSN=DSN, MODELMON_SASL_PASSWORD=SASL_PASSWORD)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "query", "SELECT 1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2
    assert "modelmon: error: cannot open ClickHouse at http://user:***@127.0.0.1:1" in out.stderr
    assert_no_secret(out.stdout + out.stderr)


def test_sink_retry_log_hides_the_password(caplog: pytest.LogCaptureFixture) -> None:
    runtime = SinkRuntime(None, settings(), Topics("secret-test."), "secret-test")  # type: ignore[arg-type]

    async def write_for_a_while() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runtime.write([]), timeout=1.2)

    with caplog.at_level(logging.DEBUG):
        asyncio.run(write_for_a_while())
    failures = [r for r in caplog.records if "ClickHouse write failed" in r.getMessage()]
    assert len(failures) >= 2  # it retried, with backoff
    assert "user:***@127.0.0.1:1" in failures[0].getMessage()
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        if record.exc_info:
            assert_no_secret("".join(traceback.format_exception(*record.exc_info)))
    assert_no_secret(caplog.text)
