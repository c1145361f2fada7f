"""The frame format: round trips in every split, bounds, resynchronisation, fuzz."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.agent import wire

messages = st.dictionaries(st.sampled_from(["a", "b", "path", "n"]),
                           st.one_of(st.integers(-2**40, 2**40), st.text(max_size=40), st.booleans(), st.none()),
                           max_size=4)
frames = st.lists(st.tuples(st.sampled_from(["exec", "out", "reply"]), st.integers(0, 1000), messages,
                            st.binary(max_size=2000)), min_size=1, max_size=8)


def _frames(spec: list[tuple[str, int, dict[str, object], bytes]]) -> list[wire.Frame]:
    return [wire.Frame({**msg, "t": kind, "id": rid}, body) for kind, rid, msg, body in spec]


@given(frames, st.lists(st.integers(1, 5000), min_size=1, max_size=50))
@settings(max_examples=200, deadline=None)
def test_frames_survive_any_split(spec: list[tuple[str, int, dict[str, object], bytes]], cuts: list[int]) -> None:
    expected = _frames(spec)
    stream = b"".join(wire.encode(f.msg, f.body) for f in expected)
    decoder = wire.Decoder()
    got: list[wire.Frame] = []
    at, i = 0, 0
    while at < len(stream):
        step = cuts[i % len(cuts)]
        got += decoder.feed(stream[at:at + step])
        at += step
        i += 1
    assert got == expected
    assert not decoder.buffer


def test_byte_at_a_time() -> None:
    frame = wire.Frame({"t": "out", "id": 7, "s": "stdout"}, bytes(range(256)) * 4)
    stream = wire.encode(frame.msg, frame.body) * 3
    decoder = wire.Decoder()
    got = [f for b in stream for f in decoder.feed(bytes([b]))]
    assert got == [frame] * 3


@pytest.mark.parametrize("bad, words", [
    (b"XY" + bytes(10), "magic"),
    (wire.HEADER.pack(wire.MAGIC, 9, 0, 2, 0) + b"{}", "version"),
    (wire.HEADER.pack(wire.MAGIC, wire.VERSION, 1, 2, 0) + b"{}", "flags"),
    (wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 2, wire.MAX_BODY + 1), "over the limits"),
    (wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, wire.MAX_JSON + 1, 0), "over the limits"),
    (wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 3, 0) + b"{]}", "not JSON"),
    (wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 2, 0) + b"[]", "object"),
    (wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 12, 0) + b'{"id":"x","t":"a"}'[:12], "JSON"),
])
def test_bad_headers_raise_before_allocating(bad: bytes, words: str) -> None:
    with pytest.raises(wire.WireError, match=words):
        wire.Decoder().feed(bad)


def test_a_huge_declared_body_is_refused_from_the_header_alone() -> None:
    decoder = wire.Decoder()
    with pytest.raises(wire.WireError):
        decoder.feed(wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 2, 0xFFFFFFFF))
    assert len(decoder.buffer) == wire.HEADER.size  # nothing read or reserved for the body


def test_encode_refuses_oversized_parts() -> None:
    with pytest.raises(wire.WireError, match="body"):
        wire.encode({"t": "in", "id": 1}, bytes(wire.MAX_BODY + 1))
    with pytest.raises(wire.WireError, match="message"):
        wire.encode({"t": "x", "id": 1, "pad": "a" * wire.MAX_JSON})


def test_host_skips_a_dead_sessions_leftovers_until_its_own_nonce() -> None:
    mine, other = os.urandom(16), os.urandom(16)
    leftovers = wire.encode({"t": "out", "id": 3, "s": "stdout"}, b"x" * 100)[:57]  # a partial frame
    stale_hello = wire.encode_hello(other, {"t": "hello", "id": 0, "version": 1})  # an older session's answer
    answer = wire.encode_hello(mine, {"t": "hello", "id": 0, "version": 1})
    after = wire.encode({"t": "reply", "id": 1, "ok": True})
    stream = b"garbage\xff\x00" + leftovers + stale_hello + answer + after
    decoder = wire.Decoder(want_nonce=mine)
    got = [f for b in stream for f in decoder.feed(bytes([b]))]
    assert [f.type for f in got] == ["hello", "reply"]
    assert decoder.nonce == mine
    assert decoder.skipped == len(stream) - len(answer) - len(after)


def test_guest_takes_any_session_and_a_new_hello_restarts_it() -> None:
    first, second = os.urandom(16), os.urandom(16)
    decoder = wire.Decoder(want_nonce=b"")
    got = decoder.feed(b"\x00tail of a frame" + wire.encode_hello(first, {"t": "hello", "id": 0}))
    assert [f.type for f in got] == ["hello"] and decoder.nonce == first
    got = decoder.feed(wire.encode({"t": "ping", "id": 1}) + wire.encode_hello(second, {"t": "hello", "id": 0}))
    assert [f.type for f in got] == ["ping", "hello"] and decoder.nonce == second


@given(st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_fuzz_never_crashes_otherwise(noise: bytes) -> None:
    for decoder in (wire.Decoder(), wire.Decoder(want_nonce=b""), wire.Decoder(want_nonce=os.urandom(16))):
        try:
            for frame in decoder.feed(noise):
                assert isinstance(frame.msg, dict)
        except wire.WireError:
            pass
        assert len(decoder.buffer) <= len(noise)
