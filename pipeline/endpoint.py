"""The query endpoint of the worker that holds an embedded database, as readers see it.

The worker publishes its address and token in a file next to the database (readable by its
own user only, removed when it stops); the engine's lock on the database's ``status`` file
tells whether any process holds the database at all. ``POST /query`` with
``{"sql": "..."}`` and ``Authorization: Bearer <token>`` answers ClickHouse's JSONCompact, or
``{"error": "..."}`` (one line) with a 4xx or 5xx status.
"""

from __future__ import annotations

import fcntl
import os
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from pipeline.sink.readonly import QueryError

FILE_NAME = "modelmon-query.json"

#: Requests that may wait while a query runs; more are answered 503. Each waits up to
#: ``query_timeout_seconds`` per query ahead of it, and so do the embedded sink's writes.
MAX_WAITING = 4

#: The longest SQL text accepted (ClickHouse's own ``max_query_size`` default).
MAX_SQL_BYTES = 262_144


@dataclass(frozen=True)
class Endpoint:
    """Where a worker answers read-only SQL, and the token it requires.

    >>> Endpoint("http://127.0.0.1:40000", "t0k3n", 4242, "modelmon").url
    'http://127.0.0.1:40000'
    """

    url: str
    token: str
    pid: int
    database: str


def publish(directory: Path, endpoint: Endpoint) -> Path:
    """Write ``endpoint`` into ``directory`` (mode 0600, replacing any older file whole)."""
    path = directory / FILE_NAME
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / f".{FILE_NAME}.{os.getpid()}"
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(asdict(endpoint)))
    os.replace(partial, path)
    return path


def withdraw(directory: Path, endpoint: Endpoint) -> None:
    """Remove the file if it still names ``endpoint``."""
    path = directory / FILE_NAME
    try:
        if _read(path) == endpoint:
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def find(directory: Path) -> Endpoint | None:
    """The endpoint published in ``directory`` by a process that is still alive, or None."""
    path = directory / FILE_NAME
    try:
        endpoint = _read(path)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise ValueError(
            f"cannot read {path}: run modelmon query as the worker's user, or give it"
            " query_url and query_token"
        ) from None
    return endpoint if alive(endpoint.pid) else None


def held(directory: Path) -> bool:
    """Whether a process has the embedded database in ``directory`` open (the engine locks
    its ``status`` file for as long as it runs)."""
    try:
        fd = os.open(directory / "status", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases a lock taken here
    return False


def ask(endpoint: Endpoint, sql: str, timeout: float | None) -> bytes:
    """The endpoint's JSONCompact answer to ``sql``; QueryError with its one-line error,
    ConnectionRefusedError if nothing listens there (any more)."""
    request = urllib.request.Request(
        endpoint.url.rstrip("/") + "/query",
        data=orjson.dumps({"sql": sql}),
        headers={"Authorization": f"Bearer {endpoint.token}", "Content-Type": "application/json"},
    )
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            message = str(orjson.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code} {body[:200].decode(errors='replace')}"
        raise QueryError(message) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise ConnectionRefusedError(endpoint.url) from None
        reason = exc.reason
        raise ConnectionError(f"cannot reach the query endpoint {endpoint.url}: {reason}") from None


#: Requests go straight to the endpoint, never through an HTTP proxy of the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read(path: Path) -> Endpoint:
    try:
        return Endpoint(**orjson.loads(path.read_bytes()))
    except (orjson.JSONDecodeError, TypeError):
        raise ValueError(f"{path}: not a modelmon query endpoint file") from None
