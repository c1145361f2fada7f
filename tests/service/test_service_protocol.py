"""The pool service's framing and message checks, without sockets (engine.service.protocol)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

import engine
from engine.service import protocol
from engine.service.errors import BadRequest, ProtocolError


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_round_trip_of_one_message() -> None:
    message = {"op": "status", "id": 7, "text": "héllo"}
    frame = protocol.encode(message)
    assert frame[:4] == struct.pack(">I", len(frame) - 4)
    assert protocol.FrameDecoder().feed(frame) == [message]


def test_partial_frames_wait_for_the_rest() -> None:
    frame = protocol.encode({"op": "status", "id": 1})
    decoder = protocol.FrameDecoder()
    for i in range(len(frame) - 1):  # header and body arrive one byte at a time
        assert decoder.feed(frame[i : i + 1]) == []
    assert decoder.pending == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [{"op": "status", "id": 1}]
    assert decoder.pending == 0


def test_several_frames_in_one_chunk_and_a_split_tail() -> None:
    messages = [{"id": n, "ok": True} for n in range(5)]
    data = b"".join(protocol.encode(m) for m in messages)
    tail = protocol.encode({"id": 99})
    decoder = protocol.FrameDecoder()
    assert decoder.feed(data + tail[:6]) == messages
    assert decoder.feed(tail[6:]) == [{"id": 99}]


def test_oversize_frame_is_refused_from_its_header() -> None:
    decoder = protocol.FrameDecoder(max_frame=100)
    with pytest.raises(ProtocolError, match="exceeds the limit of 100"):
        decoder.feed(struct.pack(">I", 101))  # no body needed to know
    with pytest.raises(ProtocolError):  # the stream is out of step: no more input
        decoder.feed(protocol.encode({"id": 1}))


def test_default_limit_is_16_mib() -> None:
    assert protocol.MAX_FRAME == 16 * 1024 * 1024
    with pytest.raises(ProtocolError):
        protocol.FrameDecoder().feed(struct.pack(">I", protocol.MAX_FRAME + 1))
    assert protocol.FrameDecoder().feed(struct.pack(">I", protocol.MAX_FRAME)) == []


def test_encoding_an_oversize_message_is_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds the frame limit"):
        protocol.encode({"data": "x" * protocol.MAX_FRAME})


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON list, not an object"),
        (b'"hello"', "JSON str, not an object"),
        (b"42", "JSON int, not an object"),
    ],
)
def test_bad_bodies_are_protocol_errors(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        protocol.FrameDecoder().feed(_frame(body))


def test_protocol_errors_are_engine_errors() -> None:
    assert issubclass(ProtocolError, engine.ServiceError)
    assert issubclass(engine.ServiceError, engine.EngineError)
    assert issubclass(engine.ServiceUnavailable, engine.ServiceError)
    assert issubclass(engine.ServiceVersionError, engine.ServiceError)


def test_hello_and_version_mismatch_name_both_versions() -> None:
    protocol.check_hello(protocol.hello())
    with pytest.raises(engine.ServiceVersionError) as info:
        protocol.check_hello(protocol.hello(version=99))
    assert "client speaks version 99" in str(info.value)
    assert f"server speaks version {protocol.PROTOCOL_VERSION}" in str(info.value)
    with pytest.raises(ProtocolError, match="expected a hello"):
        protocol.check_hello({"op": "status", "id": 1})


def test_client_checks_the_server_version() -> None:
    protocol.check_hello_reply(protocol.hello_reply(["default"]))
    with pytest.raises(engine.ServiceVersionError) as info:
        protocol.check_hello_reply({"ok": True, "version": 3})
    assert "client speaks version 2" in str(info.value) and "server speaks version 3" in str(info.value)
    with pytest.raises(engine.ServiceError, match="refused the connection: go away") as info:
        protocol.check_hello_reply(protocol.hello_refusal("go away"))
    assert not isinstance(info.value, engine.ServiceVersionError)


def test_field_checks() -> None:
    message = {"op": "reserve", "id": 3, "pool": "default", "timeout": 2, "flag": True}
    assert protocol.field(message, "pool", str) == "default"
    assert protocol.timeout_field(message) == 2.0
    assert protocol.timeout_field({"op": "reserve"}) is None
    assert protocol.field(message, "flag", bool) is True
    assert protocol.field(message, "missing", bool, False) is False
    with pytest.raises(BadRequest, match="missing field 'vm'"):
        protocol.field(message, "vm", str)
    with pytest.raises(BadRequest, match="must be a string"):
        protocol.field({"op": "reserve", "pool": 5}, "pool", str)
    with pytest.raises(BadRequest, match="must be a number"):
        protocol.timeout_field({"op": "reserve", "timeout": True})  # a bool is no timeout
    with pytest.raises(BadRequest, match=">= 0"):
        protocol.timeout_field({"op": "reserve", "timeout": -1})


def test_request_ids() -> None:
    assert protocol.request_id({"id": 5}) == 5
    assert protocol.request_id({"id": "5"}) is None
    assert protocol.request_id({"id": True}) is None
    assert protocol.request_id({}) is None


def test_events_carry_base64_output() -> None:
    event = protocol.output_event("default-1", b"\x00\xffhi\r\n", dropped=3)
    assert json.loads(json.dumps(event)) == event
    assert protocol.b64decode(event["data"]) == b"\x00\xffhi\r\n"
    assert event["dropped"] == 3
    with pytest.raises(BadRequest, match="base64"):
        protocol.b64decode("not base64!")


def test_socket_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CAPSA_SOCKET", str(tmp_path / "x.sock"))
    assert engine.service_socket_path() == tmp_path / "x.sock"
    monkeypatch.delenv("CAPSA_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert engine.service_socket_path() == tmp_path / "capsa-tui" / "pool.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert str(engine.service_socket_path()).startswith("/tmp/capsa-tui-")
