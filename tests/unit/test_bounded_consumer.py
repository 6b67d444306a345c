"""The workers' Kafka consumer bounds what it reads ahead: every fetch request, the first
included, is capped, and a partition the compute stage holds stays out of the fetch set until
it is released, even when Faust's own flow control would resume it. It commits exactly as
far as the pipeline let it. Its fetch loop is Faust's but for how it hands a message over. The
workers' producer batches several rows messages per partition. Every piece of Faust, aiokafka
and mode code it relies on beyond their public API is the code it was written against."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
import re
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from pipeline import kafka
from pipeline.kafka import FETCH_MAX_BYTES, BoundedConsumer, RawSchema
from schemas.rows import MAX_ROWS_MESSAGE_BYTES
from tests.pinned import Pinned, changed, overridden, private_names, unpinned

LABELS_0 = TP("bc.labels", 0)
LABELS_1 = TP("bc.labels", 1)


def test_the_workers_consumer_is_bounded(app: faust.App) -> None:
    assert isinstance(app.consumer, BoundedConsumer)


def test_a_held_partition_stays_out_of_the_fetch_set_until_released(app: faust.App) -> None:
    consumer = app.consumer
    assert isinstance(consumer, BoundedConsumer)
    active = consumer._set_active_tps({LABELS_0, LABELS_1})

    consumer.hold(LABELS_0)
    assert LABELS_0 not in active
    consumer.on_buffer_drop(LABELS_0)  # Faust's flow control: the stream's buffer drained
    assert LABELS_0 not in active, "a drained buffer must not resume a held partition"

    consumer.on_buffer_full(LABELS_1)  # Faust's own switch still works on the others
    assert LABELS_1 not in active
    consumer.on_buffer_drop(LABELS_1)
    assert LABELS_1 in active

    consumer.release(LABELS_0)
    assert LABELS_0 in active
    consumer.release(LABELS_0)  # releasing twice is harmless
    assert active == {LABELS_0, LABELS_1}


def test_a_revoked_partition_is_no_longer_held(app: faust.App) -> None:
    consumer = app.consumer
    assert isinstance(consumer, BoundedConsumer)
    consumer._set_active_tps({LABELS_0, LABELS_1})
    consumer.hold(LABELS_0)
    asyncio.get_event_loop().run_until_complete(consumer.on_partitions_revoked({LABELS_0}))
    assert consumer.held == set()


def _message(tp: TP, offset: int) -> ConsumerMessage:
    return ConsumerMessage(tp.topic, tp.partition, offset, 0.0, 0, [], None, b"{}", None)


def _commit_offsets(consumer: Consumer) -> dict[TP, int]:
    """What the consumer's next commit would write (Faust's own selection)."""
    return consumer._filter_committable_offsets(list(consumer._filter_tps_with_pending_acks()))


def test_faust_alone_commits_past_an_unacknowledged_first_offset(app: faust.App) -> None:
    """Why the workers' consumer ignores acknowledgements: Faust's commit skips offset 0 when
    only offset 1 was acknowledged and nothing is committed yet (a stream skipping a message
    fetched before a rebalance acknowledges it), and skips the committed offset when only the
    one after it was. A Faust that no longer does fails this, so the override is looked at
    again."""
    consumer = app.consumer
    consumer._committed_offset[LABELS_0] = None
    consumer._committed_offset[LABELS_1] = 5
    for tp, offset in ((LABELS_0, 1), (LABELS_1, 6)):
        consumer._acked[tp].append(offset)
        consumer._acked_index[tp].add(offset)
    assert {tp: Consumer._new_offset(consumer, tp) for tp in (LABELS_0, LABELS_1)} == {
        LABELS_0: 2,
        LABELS_1: 7,
    }


def test_commits_go_exactly_as_far_as_the_pipeline_advanced_them(app: faust.App) -> None:
    consumer = app.consumer
    assert isinstance(consumer, BoundedConsumer)
    consumer._committed_offset.update({LABELS_0: None, LABELS_1: 5})
    message = _message(LABELS_0, 1)
    message.incref()
    assert message.ack(consumer) is False  # as a stream acknowledges a message it skipped
    assert _commit_offsets(consumer) == {}

    consumer.advance(LABELS_0, 4)
    consumer.advance(LABELS_0, 2)  # never backwards
    consumer.advance(LABELS_1, 5)  # already committed there
    assert _commit_offsets(consumer) == {LABELS_0: 4}
    consumer.advance(LABELS_1, 9)
    assert _commit_offsets(consumer) == {LABELS_0: 4, LABELS_1: 9}

    asyncio.get_event_loop().run_until_complete(consumer.on_partitions_revoked({LABELS_0}))
    assert _commit_offsets(consumer) == {LABELS_1: 9}, "a revoked partition commits nothing"


def test_even_the_first_fetch_is_capped(app: faust.App) -> None:
    """The cap is set when the aiokafka consumer is created, before it starts fetching."""

    async def create() -> int:
        aiokafka_consumer = app.consumer._thread._create_worker_consumer(app.transport)
        return aiokafka_consumer._fetch_max_bytes

    assert asyncio.get_event_loop().run_until_complete(create()) == FETCH_MAX_BYTES


@pytest.mark.parametrize("value", [b'{"event_id": "e1"}', b"", None])
def test_raw_schema_events_equal_faust_raw_serializers_events(
    app: faust.App, value: bytes | None
) -> None:
    """The agents' schema skips Faust's codec lookups; the events it makes must not differ."""
    message = ConsumerMessage(
        "bc.labels", 0, 7, 1.5, 0, [("h", b"v")], b"key", value, None, generation_id=1
    )
    faust_raw = faust.Schema(key_serializer="raw", value_serializer="raw")  # as the agents had

    async def decode(schema: faust.Schema) -> tuple[object, ...]:
        event = await schema.compile(app)(message, propagate=True)
        return (type(event), event.key, event.value, event.headers, event.message)

    loop = asyncio.get_event_loop()
    ours = loop.run_until_complete(decode(RawSchema()))
    assert ours == loop.run_until_complete(decode(faust_raw))
    assert ours[1:4] == (b"key", value, {"h": b"v"})


def _statements(source: str) -> str:
    """The statements of a function's source, as an AST dump: no comments, no docstring."""
    fn = ast.parse(textwrap.dedent(source)).body[0]
    assert isinstance(fn, ast.AsyncFunctionDef)
    body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
    return ast.dump(ast.Module(body=body, type_ignores=[]))


def test_the_fetch_loop_is_fausts_but_for_the_hand_over_the_read_offset_and_acks() -> None:
    """A Faust upgrade that changes its loop fails this, so that the copy is looked at again."""
    faust_loop = textwrap.dedent(inspect.getsource(Consumer._drain_messages))
    bookkeeping = re.compile(
        r"\n\s*commit_every = self\._commit_every"
        r"\n\s*acks_enabled_for = self\.app\.topics\.acks_enabled_for"
        r"|\n\s*gap = offset - \(r_offset or 0\)\n.*?await self\.commit\(\)",
        re.S,
    )
    assert len(bookkeeping.findall(faust_loop)) == 2, "Faust's acknowledgement bookkeeping changed"
    faust_loop = bookkeeping.sub("", faust_loop)
    hand_over = re.compile(
        r"await self\.wait_first\(\s*callback\(message\), self\.suspend_flow\.wait\(\)\s*\)"
        r"\n(\s*)set_read_offset\(tp, offset\)"
    )
    assert len(hand_over.findall(faust_loop)) == 1, "Faust's hand-over changed"
    expected = hand_over.sub(
        "await callback(message)\n"
        "\\1if message.generation_id == self.app.consumer_generation_id:\n"
        "\\1    set_read_offset(tp, offset)",
        faust_loop,
    )
    assert _statements(inspect.getsource(BoundedConsumer._drain_messages)) == _statements(expected)


def _hand_over(app: faust.App, rebalance: bool) -> int | None:
    """Run the fetch loop over one message of LABELS_0 at offset 28, fetched under the current
    assignment, whose delivery waits while (with ``rebalance``) the partition is revoked and
    assigned again, as a full stream buffer lets happen; the partition's read offset after."""
    consumer = app.consumer
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    message = ConsumerMessage(
        LABELS_0.topic, LABELS_0.partition, 28, 0.0, 0, [], None, b"{}", None,
        generation_id=app.consumer_generation_id,
    )  # fmt: skip

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, ConsumerMessage]]:
        yield LABELS_0, message
        fetcher._stopped.set()

    async def deliver(delivered: ConsumerMessage) -> None:
        if rebalance:
            app.consumer_generation_id += 1  # what the rebalance listener does
            consumer._read_offset.pop(LABELS_0, None)  # what Faust's revocation does

    consumer.getmany = getmany  # type: ignore[method-assign]
    consumer.callback = deliver  # type: ignore[method-assign]
    asyncio.get_event_loop().run_until_complete(consumer._drain_messages(fetcher))
    return consumer._read_offset.get(LABELS_0)


def test_a_delivery_across_a_rebalance_leaves_the_new_assignment_s_read_offset(
    app: faust.App,
) -> None:
    """Else the re-read from the committed offset, below 28, is dropped as already read."""
    assert _hand_over(app, rebalance=False) == 28
    assert _hand_over(app, rebalance=True) is None


def test_the_producer_batches_rows_messages(app: faust.App) -> None:
    """With Kafka's 16 KiB default, every rows message was a batch of its own, and a flush
    waited for one broker round trip per message of a partition."""
    assert app.conf.producer_max_batch_size >= 2 * MAX_ROWS_MESSAGE_BYTES
    assert app.conf.producer_max_request_size > app.conf.producer_max_batch_size


def _read_across_a_gap(app: faust.App, loop: Callable[..., Awaitable[None]]) -> list[int]:
    """Run ``loop`` (a fetch loop) over offsets 5 and 9 of LABELS_0, read through offset 3;
    the offsets delivered."""
    consumer = app.consumer
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    consumer._read_offset[LABELS_0] = 3
    delivered: list[int] = []

    async def getmany(timeout: float) -> AsyncIterator[tuple[TP, ConsumerMessage]]:
        for offset in (5, 9):
            yield LABELS_0, _message(LABELS_0, offset)
        fetcher._stopped.set()

    async def deliver(message: ConsumerMessage) -> None:
        delivered.append(message.offset)

    consumer.getmany = getmany  # type: ignore[method-assign]
    consumer.callback = deliver  # type: ignore[method-assign]
    asyncio.get_event_loop().run_until_complete(loop(consumer, fetcher))
    return delivered


def test_offset_gaps_are_not_recorded_for_acknowledgements_that_count_for_nothing(
    app: faust.App,
) -> None:
    """For a topic whose stream acknowledges, Faust's loop records every gap in its offsets
    (transaction markers leave one per transaction) for its acknowledgement bookkeeping;
    nothing would ever read them again."""
    app.topics.acking_topics.add(LABELS_0.topic)  # as for the sink's input, whose stream acks
    assert _read_across_a_gap(app, Consumer._drain_messages) == [5, 9]
    assert app.consumer._gap.pop(LABELS_0), "Faust's own loop records the gaps"
    assert _read_across_a_gap(app, BoundedConsumer._drain_messages) == [5, 9]
    assert not app.consumer._gap.get(LABELS_0)


# --- the library code the consumer relies on ------------------------------------------------

_FAUST = "faust.transport.consumer:Consumer"
_FAUST_AIOKAFKA = "faust.transport.drivers.aiokafka"
_THREAD = f"{_FAUST_AIOKAFKA}:AIOKafkaConsumerThread"

#: Faust, aiokafka and mode code that pipeline/kafka.py overrides, calls, or whose private
#: attributes it uses, as faust-streaming 0.15.3, aiokafka 0.14.0 and mode-streaming 0.7.1
#: have it (see tests/pinned.py).
KAFKA_PINS = (
    # What BoundedConsumer and its helpers override.
    Pinned(
        "faust.transport.consumer:ThreadDelegateConsumer.__init__",
        "7072ae80eac1ff62",
        "BoundedConsumer.__init__ adds `held` and `committable`: check no Faust attribute "
        "has those names",
    ),
    Pinned(
        f"{_FAUST_AIOKAFKA}:Consumer._new_consumer_thread",
        "0870ec53dea75083",
        "BoundedConsumer._new_consumer_thread builds a _ConsumerThread instead, with the "
        "same arguments: check they still are",
        touches=("_new_consumer_thread",),
    ),
    Pinned(
        f"{_THREAD}._create_worker_consumer",
        "c2701bfc3e6f6cad",
        "_ConsumerThread._create_worker_consumer caps _fetch_max_bytes of the consumer this "
        "returns: check it still returns a new, unstarted aiokafka consumer",
        touches=("_create_worker_consumer",),
    ),
    Pinned(
        f"{_FAUST_AIOKAFKA}:Consumer.RebalanceListener",
        "f3d04f29dfb3f716",
        "BoundedConsumer.RebalanceListener is _RebalanceListener, which reads the _thread this "
        "class's __init__ sets and keeps its on_partitions_revoked: check both",
        touches=("_thread",),
    ),
    Pinned(
        f"{_FAUST_AIOKAFKA}:ConsumerRebalanceListener.on_partitions_assigned",
        "1c1f8406ad3698a6",
        "_RebalanceListener.on_partitions_assigned replaces it, giving each assignment an id "
        "of its own instead of the group generation: check it does all else this does",
    ),
    Pinned(
        f"{_FAUST}.on_buffer_drop",
        "4b57e8a418d5ad9c",
        "BoundedConsumer.on_buffer_drop lets it resume a partition only if not held: check "
        "this is still how a drained buffer resumes fetching",
    ),
    Pinned(
        f"{_FAUST}.ack",
        "5fcf41cf45153475",
        "BoundedConsumer.ack ignores acknowledgements, as commits follow advance(): check "
        "nothing else than commits depends on what this records",
    ),
    Pinned(
        f"{_FAUST}._filter_tps_with_pending_acks",
        "f6f9239774234e7e",
        "BoundedConsumer._filter_tps_with_pending_acks picks the partitions to commit from "
        "`committable` instead of the acknowledgements",
        touches=("_filter_tps_with_pending_acks",),
    ),
    Pinned(
        f"{_FAUST}._new_offset",
        "1d2c7ea89a7ad4f1",
        "BoundedConsumer._new_offset commits a partition as far as advance() let it instead",
        touches=("_new_offset",),
    ),
    Pinned(
        f"{_FAUST}.on_partitions_revoked",
        "d04b7ae72c6fc206",
        "BoundedConsumer.on_partitions_revoked forgets what it holds and may commit for the "
        "revoked partitions, then calls this: check it still forgets their read offsets",
    ),
    Pinned(
        f"{_FAUST}._drain_messages",
        "44a2500309e83c63",
        "BoundedConsumer._drain_messages is a copy of it with three changes: carry the new "
        "code over (test_the_fetch_loop_is_fausts_but_for_the_hand_over_the_read_offset_and_"
        "acks shows the difference)",
        touches=("_drain_messages",),
    ),
    Pinned(
        "faust.serializers.schemas:Schema.compile",
        "d46eec5ce3195b2c",
        "RawSchema.compile skips Faust's codec lookups: check Faust's events are still "
        "create_event(key, value, headers, message) of the raw bytes",
    ),
    # What the overrides rely on being called, and how.
    Pinned(
        "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__",
        "01506f316191f7c9",
        "_ConsumerThread._create_worker_consumer sets _fetch_max_bytes, where this keeps the "
        "fetch_max_bytes argument",
        touches=("_fetch_max_bytes",),
    ),
    Pinned(
        "aiokafka.consumer.consumer:AIOKafkaConsumer.start",
        "2f1ba70443327538",
        "the fetcher takes _fetch_max_bytes here, when the consumer starts: check the cap set "
        "before still bounds every fetch request, the first included",
    ),
    Pinned(
        f"{_THREAD}.on_start",
        "38b4e8bd1e10723a",
        "the worker's consumer is created, through _create_consumer, before it starts: check "
        "_create_worker_consumer still runs first",
    ),
    Pinned(
        f"{_THREAD}._create_consumer",
        "a4dc6ba0681a298c",
        "a worker's consumer comes from _create_worker_consumer: check it still does",
    ),
    Pinned(
        f"{_THREAD}.__post_init__",
        "913dc7c0d9578e2d",
        "the listener is built as consumer.RebalanceListener(thread): check it still is",
    ),
    Pinned(
        f"{_THREAD}.on_partitions_assigned",
        "e59e8dda43724bd4",
        "_RebalanceListener calls it with the partitions and the assignment's id: check its "
        "signature and that Faust drops messages fetched under another id",
    ),
    Pinned(
        f"{_FAUST}.__init__",
        "302410d59e6972d1",
        "BoundedConsumer._drain_messages reads and writes _read_offset as Faust's loop does: "
        "check it is still created here, None for a partition not read yet",
        touches=("_read_offset",),
    ),
    Pinned(
        f"{_FAUST}.perform_seek",
        "0e8c130ff4b0afd8",
        "a new assignment reads from the committed offsets set here; BoundedConsumer."
        "_drain_messages keeps a delivery across a rebalance from moving them",
    ),
    Pinned(
        f"{_FAUST}.on_buffer_full",
        "c8961679e0bcdce5",
        "BoundedConsumer.hold uses it to take a partition out of the fetch set: check it does",
    ),
    Pinned(
        f"{_FAUST}.force_commit",
        "cc094614d22c70fb",
        "a commit picks its partitions with _filter_tps_with_pending_acks: check it still does",
    ),
    Pinned(
        f"{_FAUST}._commit_tps",
        "a20e230b05ae8b15",
        "a commit's offsets come from _filter_committable_offsets: check they still do",
    ),
    Pinned(
        f"{_FAUST}._filter_committable_offsets",
        "dc5e9baf5d994485",
        "a partition's commit offset comes from _new_offset: check it still does",
    ),
    Pinned(
        "mode.services:Service.__init__",
        "ab4d12a25b93044a",
        "BoundedConsumer._drain_messages stops once the consumer's or the fetcher's _stopped "
        "is set, as Faust's loop does: check it is still the Event created here",
        touches=("_stopped",),
    ),
    Pinned(
        "mode.services:Service._stopped_set",
        "fc58517bc9904992",
        "... and set here when a service stops: check it still is",
    ),
)


def test_the_library_code_the_consumer_relies_on_is_the_pinned_one() -> None:
    messages = changed(KAFKA_PINS)
    assert not messages, "\n".join(messages)
    assert unpinned(KAFKA_PINS) == [], "pyproject.toml must pin these to the installed versions"


def test_every_override_and_private_name_of_the_kafka_module_is_pinned() -> None:
    pinned = {pin.target for pin in KAFKA_PINS}
    classes = [
        c for c in vars(kafka).values() if isinstance(c, type) and c.__module__ == kafka.__name__
    ]
    assert {t for c in classes for t in overridden(c)} <= pinned
    assert private_names(kafka) == {name for pin in KAFKA_PINS for name in pin.touches}


def test_the_kafka_check_fails_on_other_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the checks see when a library changes: a method whose source differs (one
    defined here), and an override of a method no pin covers."""

    def _new_offset(self: Consumer, tp: TP) -> int | None:
        return None

    monkeypatch.setattr(Consumer, "_new_offset", _new_offset)
    (message,) = changed(KAFKA_PINS)
    assert message.startswith(f"{_FAUST}._new_offset is not the code recorded (digest ")
    faust_version = importlib.metadata.version("faust-streaming")
    assert f"installed faust-streaming {faust_version}: BoundedConsumer._new_offset" in message

    class Committing(BoundedConsumer):
        async def commit(self, *args: object, **kwargs: object) -> bool:
            return False

    pinned = {pin.target for pin in KAFKA_PINS}
    assert overridden(Committing) - pinned == {f"{_FAUST}.commit"}
