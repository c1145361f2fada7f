"""The service's bounds without sockets: the shared budget, framing claims, JSON depth, outbox."""
from __future__ import annotations

import json
import struct

import pytest

from engine.service import protocol
from engine.service.budget import RequestBudget
from engine.service.errors import ProtocolError
from engine.service.limits import ServiceLimits
from engine.service.outbox import Outbox


def _header(length: int) -> bytes:
    return struct.pack(">I", length)


# -- the shared budget -----------------------------------------------------------------------


def test_budget_claims_up_to_its_limit_and_takes_nothing_on_refusal() -> None:
    budget = RequestBudget(100)
    assert budget.claim(60) and budget.used == 60
    assert not budget.claim(41) and budget.used == 60  # refused: nothing taken
    assert budget.claim(40) and budget.free == 0
    budget.release(100)
    assert budget.used == 0
    with pytest.raises(ValueError, match="only 0 are claimed"):
        budget.release(1)


def test_decoder_claims_a_frame_in_full_from_its_header() -> None:
    budget = RequestBudget(1000)
    decoder = protocol.FrameDecoder(budget=budget)
    assert decoder.feed(_header(500)[:3]) == [] and budget.used == 0  # no header yet: no claim
    decoder.feed(_header(500)[3:])
    assert budget.used == 504 and decoder.pending == 4  # claimed before any of the body
    body = json.dumps({"op": "status", "id": 1}).encode().ljust(500)
    decoder.feed(body[:100])
    assert budget.used == 504  # the claim does not grow as the body trickles in
    assert decoder.feed(body[100:]) == [{"op": "status", "id": 1}]
    assert budget.used == 0 and decoder.pending == 0


def test_two_decoders_share_one_budget_and_the_one_that_does_not_fit_is_refused() -> None:
    budget = RequestBudget(1000)
    first, second = protocol.FrameDecoder(budget=budget), protocol.FrameDecoder(budget=budget)
    first.feed(_header(600) + b"x" * 10)
    with pytest.raises(ProtocolError, match="request buffer is full.*max_request_bytes") as info:
        second.feed(_header(600))
    assert info.value.kind == "BufferFull"
    assert budget.used == 604  # the refused frame took nothing
    with pytest.raises(ProtocolError):  # the refused stream is out of step for good
        second.feed(b"")
    first.close()  # the client left with its frame unfinished: its claim goes back
    assert budget.used == 0 and first.pending == 0
    first.close()
    assert budget.used == 0


def test_decoder_tells_one_unfinished_frame_from_the_next() -> None:
    decoder = protocol.FrameDecoder()  # no budget: the frame count works all the same
    first = protocol.encode({"id": 1})
    assert (decoder.in_frame, decoder.frames_started) == (False, 0)
    decoder.feed(first[:5])
    assert (decoder.in_frame, decoder.frames_started, decoder.claimed) == (True, 1, 0)
    decoder.feed(first[5:] + first[:5])  # the first completes, the second begins in one chunk
    assert (decoder.in_frame, decoder.frames_started) == (True, 2)
    decoder.feed(first[5:])
    assert (decoder.in_frame, decoder.frames_started) == (False, 2)


def test_small_frames_in_one_chunk_hold_no_claim_afterwards() -> None:
    budget = RequestBudget(64)
    decoder = protocol.FrameDecoder(budget=budget)
    data = b"".join(protocol.encode({"op": "status", "id": n}) for n in range(100))
    assert len(decoder.feed(data)) == 100  # each fits alone; together they are far over 64
    assert budget.used == 0


def test_a_broken_frame_gives_its_claim_back() -> None:
    budget = RequestBudget(1000)
    decoder = protocol.FrameDecoder(budget=budget)
    with pytest.raises(ProtocolError, match="not UTF-8 JSON"):
        decoder.feed(_header(5) + b"{nope")
    assert budget.used == 0


# -- JSON depth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"42", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[{{{{"}', 1),  # brackets inside strings do not count
        (b'{"a": "\\"[[[", "b": [[]]}', 3),  # nor after an escaped quote inside a string
        (b'{"a": "\\\\", "b": [[]]}', 3),  # an escaped backslash ends before the closing quote
        (b'["unterminated [[[[[[', 1),  # json.loads stops at a string that never ends
        (b"[[]][[[]]]", 3),
    ],
)
def test_json_depth_counts_on_raw_bytes(body: bytes, depth: int) -> None:
    assert protocol.json_depth(body) == depth


def test_json_depth_agrees_with_the_parser_on_real_messages() -> None:
    def nested(n: int) -> object:
        value: object = "x"
        for i in range(n):
            value = [value] if i % 2 else {"k[": value}
        return value

    for n in range(0, 30, 3):
        assert protocol.json_depth(json.dumps(nested(n)).encode()) == n


def test_a_100000_deep_frame_is_refused_without_recursion() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RecursionError):  # what json.loads alone does with it
        json.loads(body)
    with pytest.raises(ProtocolError, match="more than 64 deep.*max_depth") as info:
        protocol.FrameDecoder(max_frame=len(body)).feed(_header(len(body)) + body)
    assert info.value.kind == "TooDeep"


def test_depth_limit_is_settable_and_exact() -> None:
    ok = json.dumps({"a": [[{"b": 1}]]}).encode()  # 4 deep
    assert protocol.decode_body(ok, max_depth=4) == {"a": [[{"b": 1}]]}
    with pytest.raises(ProtocolError, match="more than 3 deep"):
        protocol.decode_body(ok, max_depth=3)


# -- the outbox ------------------------------------------------------------------------------


def test_outbox_bounds_bytes_but_always_takes_one_frame() -> None:
    outbox = Outbox(10)
    assert outbox.offer(b"x" * 50)  # larger than the bound, into an empty outbox: it goes
    assert not outbox.offer(b"y")  # behind it nothing fits
    assert outbox.take() == b"x" * 50 and outbox.take() is None
    assert outbox.offer(b"a" * 6) and outbox.offer(b"b" * 4) and not outbox.offer(b"c")
    assert (len(outbox), outbox.queued_bytes) == (2, 10)
    assert outbox.take() == b"a" * 6 and outbox.queued_bytes == 4
    outbox.clear()
    assert (len(outbox), outbox.queued_bytes) == (0, 0)


# -- the limits ------------------------------------------------------------------------------


def test_limits_have_named_defaults() -> None:
    limits = ServiceLimits()
    assert limits.max_frame == protocol.MAX_FRAME and limits.max_depth == protocol.MAX_DEPTH
    assert limits.max_request_bytes >= limits.max_frame  # one largest frame always fits alone


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_connections", 0), ("hello_timeout", -1.0), ("frame_timeout", float("inf")), ("max_depth", True), ("max_frame", 1.5)],
)
def test_bad_limits_name_the_argument(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"PoolServer: {field} must be"):
        ServiceLimits(**{field: value})  # type: ignore[arg-type]  # wrong types on purpose
