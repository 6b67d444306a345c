"""SASL/TLS settings reach aiokafka (producers, replay, admin) and Faust (workers) unchanged,
and the SASL password can come only from the environment or the settings file."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from pipeline.app import _credentials
from pipeline.cli import build_parser
from pipeline.settings import Settings

SCRAM = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "monitor",
    "sasl_password": "s3cret-pass",
}


def test_sasl_ssl_config_uses_aiokafkas_names_unchanged() -> None:
    config = Settings(**SCRAM).kafka_client_config()
    assert set(config) == {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "ssl_context",
    }
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "monitor"
    assert config["sasl_plain_password"] == "s3cret-pass"
    context = config["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_has_no_ssl_context(mechanism: str) -> None:
    settings = Settings(**{**SCRAM, "security_protocol": "SASL_PLAINTEXT"}).with_(
        sasl_mechanism=mechanism
    )
    config = settings.kafka_client_config()
    assert config["security_protocol"] == "SASL_PLAINTEXT"
    assert config["sasl_mechanism"] == mechanism
    assert "ssl_context" not in config


def test_ssl_cafile_is_what_the_context_trusts(tmp_path: Path) -> None:
    from tests.tls import make_pki

    files = make_pki(tmp_path)
    context = Settings(
        security_protocol="SSL", ssl_cafile=str(files.ca_cert)
    ).kafka_client_config()["ssl_context"]
    subjects = [dict(x[0] for x in ca["subject"]) for ca in context.get_ca_certs()]
    assert subjects == [{"organizationName": "modelmon tests", "commonName": "modelmon test CA"}]


def test_plaintext_config_is_only_the_protocol() -> None:
    assert Settings().kafka_client_config() == {"security_protocol": "PLAINTEXT"}


def test_faust_credentials_carry_the_same_mechanism_user_password_and_tls() -> None:
    settings = Settings(**SCRAM)
    credentials = _credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("monitor", "s3cret-pass")
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    # What Faust hands to the aiokafka clients of a worker: the same names and values.
    auth = dict(credentials_to_aiokafka_auth(credentials))
    direct = settings.kafka_client_config()
    assert auth.pop("ssl_context") is not None
    direct.pop("ssl_context")
    assert auth == direct


def test_faust_credentials_for_ssl_and_plaintext() -> None:
    ssl_credentials = _credentials(Settings(security_protocol="SSL"))
    assert isinstance(ssl_credentials, faust.SSLCredentials)
    assert credentials_to_aiokafka_auth(ssl_credentials)["security_protocol"] == "SSL"
    assert _credentials(Settings()) is None


def test_aiokafka_clients_accept_the_config() -> None:
    async def build() -> None:
        config = Settings(**SCRAM).kafka_client_config()
        producer = AIOKafkaProducer(
            bootstrap_servers="127.0.0.1:9093", enable_idempotence=False, **config
        )
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9093", **config)
        assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
        assert producer.client._security_protocol == "SASL_SSL"
        assert consumer._client._sasl_plain_username == "monitor"
        # Never started: nothing to stop beyond the consumer's own bookkeeping.
        await consumer.stop()

    asyncio.run(build())


def test_sasl_password_comes_from_environment_or_file_never_a_flag(tmp_path: Path) -> None:
    from_env = Settings.load(env={"MODELMON_SASL_PASSWORD": "from-env"})
    assert from_env.sasl_password == "from-env"
    toml = tmp_path / "modelmon.toml"
    toml.write_text(
        'security_protocol = "SASL_SSL"\nsasl_mechanism = "SCRAM-SHA-256"\n'
        'sasl_username = "monitor"\nsasl_password = "from-file"\n'
    )
    from_file = Settings.load(file=toml, env={})
    assert from_file.kafka_client_config()["sasl_plain_password"] == "from-file"
    assert "from-file" not in repr(from_file)
    # The environment overrides the file.
    assert Settings.load(file=toml, env={"MODELMON_SASL_PASSWORD": "env"}).sasl_password == "env"

    parser = build_parser()
    args = parser.parse_args(["worker", "--sasl-username", "monitor", "--ssl-cafile", "/ca.pem"])
    assert (args.sasl_username, args.ssl_cafile) == ("monitor", "/ca.pem")
    with pytest.raises(SystemExit):
        parser.parse_args(["worker", "--sasl-password", "on-the-command-line"])
