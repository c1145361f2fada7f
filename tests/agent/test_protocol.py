"""The host session, sans-IO: ids, routing, flow-control accounting, protocol errors."""
from __future__ import annotations

from engine.agent import protocol, wire


def _greeted() -> protocol.Session:
    session = protocol.Session()
    events = session.feed(wire.encode_hello(session.nonce, {"t": "hello", "id": 0, "version": wire.VERSION}))
    assert isinstance(events[0], protocol.HelloEvent)
    return session


def test_requests_get_fresh_ids_and_replies_route_to_them() -> None:
    session = _greeted()
    a, _ = session.request({"t": "ping"})
    b, data = session.request({"t": "exec", "cmd": "true"})
    assert (a, b) == (1, 2)
    assert wire.Decoder().feed(data)[0].msg == {"t": "exec", "cmd": "true", "id": 2}
    events = session.feed(wire.encode({"t": "out", "id": 2, "s": "stderr"}, b"oops")
                          + wire.encode({"t": "reply", "id": 1, "ok": True}))
    assert events == [protocol.OutputEvent(2, "stderr", b"oops"), protocol.ReplyEvent(1, {"t": "reply", "id": 1, "ok": True})]
    assert session.open_ids == {2}


def test_window_accounting() -> None:
    session = _greeted()
    rid, _ = session.request({"t": "write", "path": "/x"})
    session.send_data(rid, bytes(1000))
    assert session.window_left(rid) == protocol.WINDOW - 1000
    assert session.feed(wire.encode({"t": "in_ack", "id": rid, "n": 600})) == [protocol.InAckEvent(rid, 600)]
    assert session.window_left(rid) == protocol.WINDOW - 400


def test_late_frames_for_a_forgotten_request_are_dropped() -> None:
    session = _greeted()
    rid, _ = session.request({"t": "exec", "cmd": "yes"})
    session.forget(rid)
    assert session.feed(wire.encode({"t": "out", "id": rid, "s": "stdout"}, b"y\n")) == []
    assert session.dead is None


def _error_for(frame: bytes, greet: bool = True) -> str:
    session = _greeted() if greet else protocol.Session()
    session.request({"t": "ping"})
    events = session.feed(frame)
    assert len(events) == 1 and isinstance(events[0], protocol.ProtocolErrorEvent), events
    assert session.dead and session.feed(wire.encode({"t": "reply", "id": 1, "ok": True})) == []
    return events[0].reason


def test_protocol_errors() -> None:
    assert "never sent" in _error_for(wire.encode({"t": "reply", "id": 99, "ok": True}))
    assert "unknown frame type" in _error_for(wire.encode({"t": "boom", "id": 1}))
    assert "unknown stream" in _error_for(wire.encode({"t": "out", "id": 1, "s": "stdin"}))
    assert "never sent" in _error_for(wire.encode({"t": "in_ack", "id": 1, "n": 5}))
    assert "boolean" in _error_for(wire.encode({"t": "reply", "id": 1}))
    assert "second hello" in _error_for(wire.encode({"t": "hello", "id": 0, "version": 1}))
    assert "magic" in _error_for(b"\x00\x01garbage-garbage")


def test_a_version_mismatch_is_a_protocol_error() -> None:
    session = protocol.Session()
    events = session.feed(wire.encode_hello(session.nonce, {"t": "hello", "id": 0, "version": 99}))
    assert isinstance(events[0], protocol.ProtocolErrorEvent) and "version 99" in events[0].reason


def test_output_past_the_window_is_a_protocol_error_and_acks_give_credit() -> None:
    session = protocol.Session()
    session.feed(wire.encode_hello(session.nonce, {"t": "hello", "id": 0, "version": wire.VERSION}))
    rid, _ = session.request({"t": "exec", "cmd": "cat"})
    chunk = b"x" * wire.MAX_BODY
    sent = 0
    while sent + len(chunk) <= protocol.WINDOW:
        (event,) = session.feed(wire.encode({"t": "out", "id": rid, "s": "stdout"}, chunk))
        assert isinstance(event, protocol.OutputEvent)
        sent += len(chunk)
    session.ack(rid, sent)  # the reader consumed it all: a full window more is fine
    for _ in range(protocol.WINDOW // len(chunk)):
        assert isinstance(session.feed(wire.encode({"t": "out", "id": rid, "s": "stdout"}, chunk))[0], protocol.OutputEvent)
    # Unacknowledged now: one chunk of overshoot is tolerated, the next is a flood.
    assert isinstance(session.feed(wire.encode({"t": "out", "id": rid, "s": "stdout"}, chunk))[0], protocol.OutputEvent)
    (event,) = session.feed(wire.encode({"t": "out", "id": rid, "s": "stdout"}, chunk))
    assert isinstance(event, protocol.ProtocolErrorEvent) and "ahead of our acknowledgements" in event.reason
