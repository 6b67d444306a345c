"""Rows messages: many rows of one table per message, bounded in size."""

from __future__ import annotations

from itertools import pairwise

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.rows import decode_rows, encode_bounded, encode_rows

_rows = st.lists(
    st.fixed_dictionaries(
        {
            "model": st.text(max_size=30),
            "version": st.integers(0, 2**40),
            "values": st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=40),
            "sketch": st.dictionaries(st.integers(-500, 500), st.integers(0, 10**6), max_size=8),
        }
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(rows=_rows, max_bytes=st.integers(60, 4000), result_set=st.sampled_from(["", "fix1"]))
def test_bounded_messages_carry_the_rows_in_order_within_the_bound(
    rows: list[dict], max_bytes: int, result_set: str
) -> None:
    messages = encode_bounded("feature_partials", rows, max_bytes, result_set)
    batches = [decode_rows(m) for m in messages]
    as_json = orjson.loads(orjson.dumps(rows, option=orjson.OPT_NON_STR_KEYS))  # keys as text
    assert [r for b in batches for r in b.rows] == as_json
    assert all(b.table == "feature_partials" and b.result_set == result_set for b in batches)
    for message, batch in zip(messages, batches, strict=True):
        # exactly what one message of these rows is, and within the bound unless a single row
        assert message == encode_rows("feature_partials", batch.rows, result_set)
        assert len(message) <= max_bytes or len(batch.rows) == 1
    # full: the next message's first row would not have fitted in the previous message
    for previous, following in pairwise(batches):
        fuller = encode_rows("feature_partials", [*previous.rows, following.rows[0]], result_set)
        assert len(fuller) > max_bytes
