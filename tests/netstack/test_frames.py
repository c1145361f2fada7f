"""The stream netdev framing: frames split anywhere, joined, and corrupt lengths."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.netstack.errors import PacketError
from engine.netstack.frames import StreamDeframer, frame


def test_frames_in_one_chunk_and_split_across_chunks() -> None:
    stream = frame(b"first") + frame(b"") + frame(b"x" * 1500)
    d = StreamDeframer()
    assert d.feed(stream[:3]) == []
    assert d.feed(stream[3:10]) == [b"first"]
    assert d.feed(stream[10:]) == [b"", b"x" * 1500]
    assert d.pending == 0


def test_an_impossible_length_is_an_error_not_a_huge_buffer() -> None:
    d = StreamDeframer(max_frame=2000)
    with pytest.raises(PacketError, match="exceeds 2000"):
        d.feed(b"\x00\x01\x00\x00" + b"y" * 10)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20), st.lists(st.integers(1, 64), min_size=1, max_size=50))
def test_any_split_of_the_stream_gives_back_the_same_frames(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(f) for f in frames)
    d = StreamDeframer()
    out: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        out += d.feed(stream[pos : pos + step])
        pos += step
        i += 1
    assert out == frames
    assert d.pending == 0
