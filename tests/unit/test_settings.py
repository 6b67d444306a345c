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


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "lateness_seconds = true",
            "lateness_seconds: expected int (a whole number), got bool True",
        ),
        (
            "lateness_seconds = 45.9",
            "lateness_seconds: expected int (a whole number), got float 45.9",
        ),
        ('lateness_seconds = "60"', "lateness_seconds: expected int (a whole number), got '60'"),
        ("flush_interval_seconds = false", "flush_interval_seconds: expected float"),
        ("flush_interval_seconds = nan", "flush_interval_seconds: expected float"),
        ('bootstrap_servers = ["a:1", "b:2"]', "bootstrap_servers: expected str (text), got list"),
        ("group_id = 7", "group_id: expected str (text), got int 7"),
        ("sasl_password = 12345", "sasl_password: expected str (text), got a secret of type int"),
        ("[kafka]\nbootstrap_servers = 'a:1'", "unknown settings: kafka"),
    ],
)
def test_file_values_of_another_type_are_rejected_naming_file_and_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    file = tmp_path / "m.toml"
    file.write_text(toml + "\n")
    with pytest.raises(ValueError) as info:
        Settings.load(file=file, env={})
    assert str(info.value).startswith(f"config file {file}: "), info.value
    assert message in str(info.value)
    assert "12345" not in str(info.value)


def test_an_int_is_a_float_but_not_the_other_way_round(tmp_path: Path) -> None:
    file = tmp_path / "m.toml"
    file.write_text("flush_interval_seconds = 2\nlateness_seconds = 30\n")
    s = Settings.load(file=file, env={})
    assert s.flush_interval_seconds == 2.0 and type(s.flush_interval_seconds) is float
    assert s.lateness_seconds == 30 and type(s.lateness_seconds) is int


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("LATENESS_SECONDS", "abc"),
        ("LATENESS_SECONDS", "30.5"),
        ("LATENESS_SECONDS", ""),
        ("LATENESS_SECONDS", "true"),
        ("LATENESS_SECONDS", "1e3"),
        ("SINK_BATCH_SECONDS", "soon"),
        ("SINK_BATCH_SECONDS", "inf"),
        ("SINK_BATCH_SECONDS", "nan"),
    ],
)
def test_environment_text_is_parsed_strictly_naming_the_variable(name: str, text: str) -> None:
    with pytest.raises(ValueError, match=rf"^MODELMON_{name}: expected (int|float) "):
        Settings.load(env={f"MODELMON_{name}": text})


def test_flags_are_parsed_strictly_naming_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^--lateness-seconds: expected int .*, got 'abc'$"):
        Settings.load(env={}, flags={"lateness_seconds": "abc"})
    s = Settings.load(
        env={"MODELMON_LATENESS_SECONDS": " 45 "}, flags={"flush_interval_seconds": "0.5"}
    )
    assert (s.lateness_seconds, s.flush_interval_seconds) == (45, 0.5)


def test_an_unreadable_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"absent\.toml: cannot read it: No such file"):
        Settings.load(file=tmp_path / "absent.toml", env={})
    with pytest.raises(ValueError, match=r"absent.toml \(MODELMON_CONFIG\): cannot read it"):
        Settings.load(env={"MODELMON_CONFIG": str(tmp_path / "absent.toml")})
    broken = tmp_path / "broken.toml"
    broken.write_text("lateness_seconds = 30\nlateness_seconds =\n")
    with pytest.raises(ValueError, match=r"broken.toml: not valid TOML: .*line 2"):
        Settings.load(file=broken, env={})


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
