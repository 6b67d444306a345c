"""Topic administration, and how the workers read Kafka: keys and values as bytes
(:class:`RawSchema`), through a consumer bounded in what it reads ahead
(:class:`BoundedConsumer`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from typing import Any, TypeVar, cast

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from faust import Schema
from faust.transport.consumer import CONSUMER_FETCHING, ensure_TPset
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, EventT, Message
from mode import Service, ServiceT

from pipeline.errors import QuietLog, StartupError

log = logging.getLogger(__name__)


class RawSchema(Schema):
    """Keys and values as the bytes Kafka holds: the agents decode them themselves. Faust's
    ``raw`` serializers give the same bytes, through a codec lookup per key and per value."""

    def compile(self, app: AppT, **_: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Message, *, propagate: bool = False) -> EventT:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class TopicAdmin:
    """An admin connection for the checks a command makes at start: it connects within
    ``timeout`` seconds or raises ConnectionError naming the servers and aiokafka's last
    error, and keeps aiokafka's log to itself while it is open (a broker that does not answer
    makes aiokafka log every failed attempt, a few per second).

    Use it as ``async with TopicAdmin(...) as admin``; :func:`ensure_topics` is the short way.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        client_config: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.client_config = dict(client_config or {})
        self.timeout = timeout
        self._admin: AIOKafkaAdminClient | None = None
        self._quiet = QuietLog("aiokafka")

    async def __aenter__(self) -> TopicAdmin:
        self._quiet.__enter__()
        try:
            await self._connect()
        except BaseException:
            self._quiet.__exit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._admin is not None:
                await self._admin.close()
        finally:
            self._quiet.__exit__()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers,
                request_timeout_ms=max(int(self.timeout * 1000), 1000),
                **self.client_config,
            )
            try:
                await asyncio.wait_for(admin.start(), max(deadline - loop.time(), 0.01))
                self._admin = admin
                return
            except (KafkaError, OSError, TimeoutError) as exc:
                await admin.close()
                if loop.time() + 0.2 >= deadline:
                    reason = self._quiet.last or str(exc) or type(exc).__name__
                    raise ConnectionError(
                        f"cannot reach Kafka at {self.bootstrap_servers} within"
                        f" {self.timeout:g}s (connect_timeout_seconds): {reason}"
                    ) from None
            await asyncio.sleep(0.2)

    async def partitions(self) -> dict[str, int]:
        """The partition count of every topic that exists (all topics are asked for: asking
        for some by name lets a broker that creates topics on use create them)."""
        assert self._admin is not None
        described = await self._ask(self._admin.describe_topics())
        return {t["topic"]: len(t["partitions"]) for t in described if not t["error_code"]}

    async def create(self, topics: Mapping[str, int]) -> dict[str, int]:
        """Create ``topics`` (name -> partitions) unless they exist; returns the partition
        count of each as the broker has it. A refusal raises StartupError naming the topics
        and the broker's reasons."""
        assert self._admin is not None
        existing = await self.partitions()
        missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
        if missing:
            response = await self._ask(self._admin.create_topics(missing))
            refused = [
                f"{topic} ({_error_text(code, rest)})"
                for topic, code, *rest in response.topic_errors
                if code not in (0, TopicAlreadyExistsError.errno)
            ]
            if refused:
                raise StartupError(
                    f"Kafka at {self.bootstrap_servers} refused to create topics: "
                    + ", ".join(refused)
                    + "; create them beforehand, or allow this client to"
                )
            log.info("created topics %s", [t.name for t in missing])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            existing = await self.partitions()
            absent = sorted(set(topics) - set(existing))
            if not absent:
                return {t: existing[t] for t in topics}
            if loop.time() >= deadline:
                raise StartupError(f"topics {absent} were created but do not show up")
            await asyncio.sleep(0.1)  # a new topic's metadata can take a moment to spread

    async def _ask(self, request: Awaitable[_T]) -> _T:
        """A request's answer; a broker that fails to give one raises ConnectionError."""
        try:
            return await request
        except KafkaError as exc:
            raise ConnectionError(
                f"Kafka at {self.bootstrap_servers} did not answer: {type(exc).__name__}: {exc}"
            ) from None


_T = TypeVar("_T")


def _error_text(code: int, rest: list[Any]) -> str:
    """A broker's error code (and message, where the protocol version has one) as text.

    >>> _error_text(29, ["not yours"])
    'TopicAuthorizationFailedError: not yours'
    >>> _error_text(29, [None]).startswith("TopicAuthorizationFailedError: Returned by the broker")
    True
    """
    error = for_code(code)
    message = rest[0] if rest and rest[0] else error.description
    return f"{error.__name__}: {message}"


async def ensure_topics(
    bootstrap_servers: str,
    topics: Mapping[str, int],
    client_config: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Create the topics that do not exist yet (name -> partitions) and return the partition
    count of each, as the broker has it (existing topics are left as they are). A broker that
    does not answer within ``timeout`` seconds raises ConnectionError; one that refuses to
    create a topic raises StartupError."""
    async with TopicAdmin(bootstrap_servers, client_config, timeout) as admin:
        return await admin.create(topics)


#: What one fetch request of a worker may return, over all its partitions. A message larger
#: than this still comes whole, alone (KIP-74), so it bounds what is read ahead, not what can
#: be read. 1 MiB is a few envelopes of predictions, or about 60 of labels; 256 KiB held
#: labels closer (a 40 s lead instead of 140 s in the benchmark's catch-up) but cost 12 % of
#: the single-event rate (more fetch round trips), for no peak RSS that could be told apart.
FETCH_MAX_BYTES = 1024 * 1024


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust sets only the per-partition limit, which some brokers (Tansu) ignore, and
        # does not pass the request's limit through (aiokafka's default is 50 MiB): set it
        # before the consumer starts, so that even its first fetch is bounded.
        consumer._fetch_max_bytes = FETCH_MAX_BYTES
        return consumer


class _RebalanceListener(faust_aiokafka.ConsumerRebalanceListener):
    """Gives every assignment an id of its own. Faust drops a message fetched under an older
    assignment by comparing these ids, and takes them from the group's generation, which some
    brokers (Tansu) leave unchanged across rebalances: messages fetched before a rebalance
    would then be delivered after it, ahead of the re-read from the committed offsets."""

    async def on_partitions_assigned(self, assigned: Any) -> None:
        app = self._thread.app
        app.consumer_generation_id += 1
        await self._thread.on_partitions_assigned(
            ensure_TPset(assigned), app.consumer_generation_id
        )


class BoundedConsumer(faust_aiokafka.Consumer):
    """Faust's Kafka consumer, bounded in what it reads ahead: each fetch returns at most
    :data:`FETCH_MAX_BYTES`, and the pipeline can *hold* a partition, which is then not
    fetched again until it releases it, whatever Faust's own flow control decides meanwhile.

    It commits a partition exactly as far as the pipeline let it (:meth:`advance`), never from
    Faust's acknowledgements, which are ignored. Faust acknowledges the messages its streams
    skip (those fetched before a rebalance, and those taken while one runs) as if processed;
    and it commits an acknowledged offset past an unacknowledged one at the head, always when
    nothing is committed yet for the partition. Either way a commit went past input that live
    state still needed, and the next assignment or a restart started after it: lost.

    Holding is Faust's buffer-full switch (what was fetched is still delivered; stopping
    with ``pause_partitions`` would drop it), made to stick: Faust lifts that switch
    whenever a stream's buffer drains, which would let a held partition run ahead again.

    Its rebalance listener gives every assignment an id of its own (see
    :class:`_RebalanceListener`), and its fetch loop hands each message over without Faust's
    four tasks per message and without letting a rebalance during a hand-over skip messages
    (see :meth:`_drain_messages`).
    """

    RebalanceListener = _RebalanceListener

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: set[TP] = set()
        #: Per partition, the offset its next commit may reach (see :meth:`advance`).
        self.committable: dict[TP, int] = {}

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def hold(self, tp: TP) -> None:
        self.held.add(tp)
        self.on_buffer_full(tp)  # again every time: a rebalance makes it active again

    def release(self, tp: TP) -> None:
        if tp in self.held:
            self.held.discard(tp)
            super().on_buffer_drop(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        if tp not in self.held:
            super().on_buffer_drop(tp)

    def advance(self, tp: TP, offset: int) -> None:
        """Let the next commit of ``tp`` reach ``offset``: nothing before it is needed again
        (what it produced is durable). Offsets only move forward."""
        if offset > self.committable.get(tp, -1):
            self.committable[tp] = offset

    def ack(self, message: Message) -> bool:
        """Ignored: commits follow :meth:`advance` (see the class docstring)."""
        return False

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        return (
            tp for tp in self.committable if topics is None or tp in topics or tp.topic in topics
        )

    def _new_offset(self, tp: TP) -> int | None:
        return self.committable.get(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.held.difference_update(revoked)
        for tp in revoked:
            self.committable.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        """Faust's fetch loop (``Consumer._drain_messages`` of faust-streaming 0.15.3) with
        three changes.

        A message is handed to its streams by awaiting the conductor's callback, where Faust
        awaits ``wait_first(callback(message), suspend_flow.wait())``. ``wait_first`` creates
        four tasks and an ``asyncio.wait`` for every message: a third of a worker's time on
        single-event messages. What it adds is giving up a delivery that waits (a full stream
        buffer) once the flow is suspended, which Faust does only when the app stops, and then
        it stops the fetcher, which cancels this loop and the delivery with it.

        A message's offset becomes its partition's read offset only if no rebalance happened
        since it was fetched. A delivery waits while the stream's buffer is full; if the
        partition was revoked and assigned again meanwhile, Faust recorded the stale offset
        for the new assignment, and dropped as already read every message between the
        committed offset, where the new assignment starts, and that offset: live state lost
        them, and the rows of their windows came out short.

        It keeps none of Faust's acknowledgement bookkeeping, which commits no longer follow
        (see :meth:`advance`): the offset gaps Faust records for it (one per gap in a topic's
        offsets, as transaction markers leave) were never read again and only piled up, and
        its count-based commit counted acknowledgements that no longer come.

        ``tests/unit/test_bounded_consumer.py`` checks that the rest is Faust's code.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator, getmany(timeout=1.0))

                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            await callback(message)
                            if message.generation_id == self.app.consumer_generation_id:
                                set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(flag_consumer_fetching)
