"""The read-only SQL endpoint of the worker that holds the embedded database: chDB opens a
database in one process only, so readers (``modelmon query``) ask this process while it runs
(the protocol: :mod:`pipeline.endpoint`).

Queries run one at a time in a thread of their own under the sink's lock
(:class:`~pipeline.sink.readonly.ReadOnlyQueries`), within the ``query_*`` limits; a few
wait, more are turned away. Nothing a request does stops or blocks the worker: a failure is
the request's answer.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust
import orjson
from aiohttp import web
from mode import Service

from pipeline.agents.sink import SinkRuntime
from pipeline.endpoint import MAX_SQL_BYTES, MAX_WAITING, Endpoint, publish, withdraw
from pipeline.settings import Settings
from pipeline.sink.clickhouse import chdb_path
from pipeline.sink.readonly import Limits, QueryError, ReadOnlyQueries, one_line

log = logging.getLogger(__name__)


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` of ``query_listen`` (an IPv6 host in brackets).

    >>> parse_listen("127.0.0.1:0"), parse_listen("[::1]:8125")
    (('127.0.0.1', 0), ('::1', 8125))
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"query_listen: expected host:port (port 0 = any free one), got {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


class QueryEndpoint(Service):
    """The HTTP server, started and stopped with the app; it publishes its address and token
    next to the database (:mod:`pipeline.endpoint`) while it listens.

    >>> from pipeline.settings import Settings
    >>> QueryEndpoint(None, Settings(query_listen="127.0.0.1:8125")).port  # type: ignore[arg-type]
    8125
    """

    def __init__(self, runtime: SinkRuntime, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime
        self.settings = settings
        self.host, self.port = parse_listen(settings.query_listen)
        self.limits = Limits.of(settings)
        self.token = settings.query_token or secrets.token_urlsafe(32)
        self.endpoint: Endpoint | None = None
        self._runner: web.AppRunner | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelmon-query")
        self._queries: ReadOnlyQueries | None = None
        self._waiting = 0

    async def on_start(self) -> None:
        app = web.Application(client_max_size=MAX_SQL_BYTES)
        app.router.add_post("/query", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            # The worker's job is the results; it runs on without the endpoint.
            log.error("no read-only SQL endpoint: cannot listen on %s: %s", self.host, exc)
            await runner.cleanup()
            return
        self._runner = runner
        host, port = runner.addresses[0][:2]
        if host in ("0.0.0.0", "::"):  # every interface: local readers use loopback
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        shown = f"[{host}]" if ":" in host else host
        self.endpoint = Endpoint(
            f"http://{shown}:{port}", self.token, os.getpid(), self.settings.clickhouse_database
        )
        directory = chdb_path(self.settings.clickhouse_dsn)
        if directory is not None:
            where = publish(directory, self.endpoint)
            log.info("read-only SQL on %s (published in %s)", self.endpoint.url, where)

    async def on_stop(self) -> None:
        directory = chdb_path(self.settings.clickhouse_dsn)
        if self.endpoint is not None and directory is not None:
            withdraw(directory, self.endpoint)
        if self._runner is not None:
            await self._runner.cleanup()
        self._executor.submit(self._close)
        self._executor.shutdown(wait=False)

    async def _handle(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.token}".encode()):
            return _error(401, "a valid token is required (Authorization: Bearer <token>)")
        try:
            sql = orjson.loads(await request.read())["sql"]
            if not isinstance(sql, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected a JSON object {"sql": "..."}')
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"SQL longer than {MAX_SQL_BYTES} bytes")
        if self._waiting > MAX_WAITING:
            return _error(503, f"busy: {self._waiting} queries ahead; try again")
        self._waiting += 1
        try:
            body = await asyncio.wrap_future(self._executor.submit(self._run, sql))
        except QueryError as exc:
            return _error(400, str(exc))
        except ConnectionError as exc:
            return _error(503, str(exc))
        except Exception as exc:
            log.exception("read-only query failed")
            return _error(500, one_line(str(exc)))
        finally:
            self._waiting -= 1
        return web.Response(body=body, content_type="application/json")

    def _run(self, sql: str) -> bytes:
        """Run ``sql`` (in the endpoint's thread), opening the sink's database first if the
        sink has not yet."""
        if self._queries is None:
            sink = self.runtime.open()
            self._queries = ReadOnlyQueries(
                self.settings.clickhouse_dsn, sink.database, self.limits, sink.lock
            )
        return self._queries.run(sql)

    def _close(self) -> None:
        if self._queries is not None:
            self._queries.close()


def _error(status: int, message: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps({"error": message}), content_type="application/json"
    )


def register(app: faust.App, runtime: SinkRuntime) -> None:
    """Serve read-only SQL while ``app`` runs (an embedded database only: a server answers
    its readers itself)."""
    settings = runtime.settings
    if settings.query_listen and chdb_path(settings.clickhouse_dsn) is not None:
        app.service(QueryEndpoint(runtime, settings))  # type: ignore[arg-type]
