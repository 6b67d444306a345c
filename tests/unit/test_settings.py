"""Settings: precedence, validation, secrets, and the README documents every one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import SECRET_FLAGS, build_parser
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_flags_win_over_environment_over_file(tmp_path: Path) -> None:
    file = tmp_path / "m.toml"
    file.write_text('window = "10s"\nlateness_seconds = 5\ngroup_id = "from-file"\n')
    s = Settings.load(
        file=file,
        env={"MODELMON_WINDOW": "20s", "MODELMON_GROUP_ID": "from-env"},
        overrides={"window": "30s"},
    )
    assert (s.window, s.lateness_seconds, s.group_id) == ("30s", 5, "from-env")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"role": "both"}, "role"),
        ({"lateness_seconds": "sixty"}, "lateness_seconds: expected int"),
        ({"window": "2w"}, "window: "),
        ({"window": "day", "window_timezone": "Mars/Olympus"}, "window: .*Mars/Olympus"),
        ({"family_windows": "nosuchfamily=day"}, "family_windows: expected"),
        ({"partitions": 0}, "partitions: must be >= 1"),
        ({"clickhouse_database": "x; DROP TABLE y"}, "clickhouse_database"),
        ({"no_such_setting": 1}, "unknown settings: no_such_setting"),
        ({"sink_batch_seconds": 0}, "sink_batch_seconds: must be > 0"),
        ({"derive_interval_seconds": -1}, "derive_interval_seconds: must be >= 0"),
        ({"idle_exit_seconds": 1, "flush_interval_seconds": 2}, "idle_exit_seconds: must be"),
    ],
)
def test_bad_values_are_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.load(env={}, overrides=overrides)


def test_secrets_are_not_printed_and_reach_the_kafka_client_unchanged() -> None:
    s = Settings.load(
        env={
            "MODELMON_SASL_PASSWORD": "s3cr3t",
            "MODELMON_SASL_USERNAME": "svc",
            "MODELMON_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "MODELMON_SASL_MECHANISM": "SCRAM-SHA-512",
        }
    )
    assert "s3cr3t" not in repr(s)
    config = s.kafka_client_config()
    assert config == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cr3t",
    }


def test_every_setting_is_documented_in_the_readme_and_is_a_flag() -> None:
    readme = (ROOT / "README.md").read_text()
    help_text = build_parser()._subparsers._group_actions[0].choices["worker"].format_help()
    for name, _, _ in Settings.docs():
        assert f"`{name}`" in readme and f"`MODELMON_{name.upper()}`" in readme, name
        flag = "--" + name.replace("_", "-")
        assert (flag in help_text) == (name not in SECRET_FLAGS), name
