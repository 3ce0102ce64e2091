"""Example-based tests of the server connection state machine (hello/auth, close rules)."""

from __future__ import annotations

from typing import Any

import pytest

from pageserver.wire import (
    CLOSED,
    NEED_DATA,
    ConnState,
    ErrorCode,
    ErrorEvent,
    HelloRequest,
    RequestEvent,
    ServerConnection,
    StatusRequest,
    encode_error,
    encode_frame,
    encode_request,
    token_checker,
)
from tests.wire._helpers import KEY, TL


def events(conn: ServerConnection) -> list[Any]:
    out = []
    while True:
        ev = conn.next_event()
        out.append(ev)
        if ev is NEED_DATA or ev is CLOSED:
            return out


def test_conn_without_auth() -> None:
    c = ServerConnection(1000)
    assert c.state is ConnState.READY
    c.receive_data(encode_request("status", id=1) + encode_request("hello", id=2))
    evs = events(c)
    assert evs == [
        RequestEvent(StatusRequest(id=1)),
        RequestEvent(HelloRequest(id=2)),
        NEED_DATA,
    ]
    assert evs[0].id == 1


def test_conn_auth_flow() -> None:
    c = ServerConnection(1000, auth_required=True, token_check=token_checker("s3cret"))
    assert c.state is ConnState.AWAITING_HELLO
    c.receive_data(
        encode_request("status", id=1)
        + encode_request("nonsense", id=2)
        + encode_frame({"id": 3})
        + b"\x00\x00\x00\x01\xc1"  # not msgpack: still bad_frame before hello
        + encode_request("hello", id=5, token="s3cret")
        + encode_request("status", id=6)
    )
    evs = events(c)
    assert [(e.id, e.code, e.close_after) for e in evs[:4]] == [
        (1, ErrorCode.UNAUTHORIZED, False),
        (2, ErrorCode.UNAUTHORIZED, False),
        (3, ErrorCode.UNAUTHORIZED, False),
        (None, ErrorCode.BAD_FRAME, False),
    ]
    assert evs[4:] == [
        RequestEvent(HelloRequest("s3cret", id=5)),
        RequestEvent(StatusRequest(id=6)),
        NEED_DATA,
    ]
    assert c.state.value == "ready"  # (mypy narrowed c.state above)


@pytest.mark.parametrize("token", [5, b"s3cret", ["s3cret"], True, {"t": 1}])
def test_conn_hello_with_a_mistyped_token_is_unauthorized_and_closes(token: Any) -> None:
    """Issue 11.4: a hello whose token is not a string is an unauthorized hello (SPEC
    section 5: the connection closes after that reply), not a bad_request that keeps it."""
    c = ServerConnection(1000, auth_required=True, token_check=token_checker("s3cret"))
    c.receive_data(encode_request("hello", id=4, token=token) + encode_request("status", id=5))
    evs = events(c)
    assert [(e.id, e.code, e.close_after) for e in evs[:1]] == [(4, ErrorCode.UNAUTHORIZED, True)]
    assert evs[1:] == [CLOSED]
    # Once authenticated, a later hello with a mistyped token closes too.
    c = ServerConnection(1000, auth_required=True, token_check=token_checker("s3cret"))
    c.receive_data(encode_request("hello", id=1, token="s3cret") + encode_request("hello", id=2, token=token))
    evs = events(c)
    assert isinstance(evs[0], RequestEvent)
    assert (evs[1].id, evs[1].code, evs[1].close_after) == (2, ErrorCode.UNAUTHORIZED, True)


@pytest.mark.parametrize("token", [None, "wrong", "s3cre", "s3cret\x00", "ß"])
def test_conn_bad_hello_closes(token: str | None) -> None:
    c = ServerConnection(1000, auth_required=True, token_check=token_checker("s3cret"))
    fields = {} if token is None else {"token": token}
    c.receive_data(encode_request("hello", id=1, **fields) + encode_request("status"))
    ev = c.next_event()
    assert ev == ErrorEvent(1, ErrorCode.UNAUTHORIZED, "bad token", close_after=True)
    assert c.should_close and c.state is ConnState.CLOSING
    assert c.next_event() is CLOSED
    assert c.room == 0


def test_conn_wrong_hello_after_auth_closes() -> None:
    c = ServerConnection(1000, auth_required=True, token_check=token_checker("t"))
    c.receive_data(encode_request("hello", token="t") + encode_request("hello", token="u"))
    assert isinstance(c.next_event(), RequestEvent)
    ev = c.next_event()
    assert isinstance(ev, ErrorEvent) and ev.close_after


def test_conn_frame_too_large_closes() -> None:
    c = ServerConnection(64)
    c.receive_data(encode_request("status", id=1) + b"\x00\x00\x00\x41" + b"x" * 100)
    assert c.next_event() == RequestEvent(StatusRequest(id=1))
    ev = c.next_event()
    assert isinstance(ev, ErrorEvent) and ev.code is ErrorCode.FRAME_TOO_LARGE
    assert ev.close_after and ev.id is None and c.should_close
    assert c.next_event() is CLOSED
    c.receive_data(b"more")
    assert c.buffered == 0


def test_conn_errors_do_not_close() -> None:
    c = ServerConnection(1000)
    c.receive_data(
        b"\x00\x00\x00\x00"
        + encode_frame([1, 2])
        + encode_request("get", id=1, tenant_id="..", timeline_id=TL, key=KEY, lsn=1)
        + encode_request("status", id=2)
    )
    evs = events(c)
    assert [getattr(e, "code", None) for e in evs] == [
        ErrorCode.BAD_FRAME,
        ErrorCode.BAD_FRAME,
        ErrorCode.INVALID_ID,
        None,
        None,
    ]
    assert not any(getattr(e, "close_after", False) for e in evs)
    assert evs[3] == RequestEvent(StatusRequest(id=2))


def test_conn_eof() -> None:
    c = ServerConnection(1000)
    f = encode_request("status", id=1)
    c.receive_data(f + f[:3])
    c.receive_data(b"")
    assert c.next_event() == RequestEvent(StatusRequest(id=1))
    assert c.next_event() is CLOSED
    assert c.state is ConnState.CLOSED and c.should_close


def test_conn_shutdown() -> None:
    c = ServerConnection(1000)
    c.receive_data(encode_request("status", id=1))
    c.start_shutdown()
    ev = c.next_event()
    assert ev == ErrorEvent(1, ErrorCode.SHUTTING_DOWN, "the server is shutting down")
    assert not c.should_close
    assert ev.encode() == encode_error(1, ErrorCode.SHUTTING_DOWN, "the server is shutting down")


def test_conn_requires_checker() -> None:
    with pytest.raises(ValueError):
        ServerConnection(auth_required=True)


def test_token_checker() -> None:
    check = token_checker("pässword")
    assert check("pässword")
    assert not check("password")
    assert not check("")
