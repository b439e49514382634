"""The RFC 6455 client fed bytes, with no socket: what a server may send, and what it must
not (masked frames, fragments out of order, bad UTF-8, oversize frames), and the close
handshake."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Iterator

import pytest

from conn.websocket import ClosedInfo, WebSocketTransport, mask_payload

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


class FakeTransport(asyncio.Transport):
    """Records what the client writes; closing it tells the protocol the connection is lost."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False
        self.protocol: WebSocketTransport | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            self.protocol.connection_lost(None)

    def close(self) -> None:
        self.abort()


class Client:
    def __init__(self, max_message: int = 1 << 20) -> None:
        self.messages: list[bytes | str] = []
        self.closed: list[ClosedInfo] = []
        self.ws = WebSocketTransport(
            "ws://test/", self.messages.append, lambda _, info: self.closed.append(info),
            max_message=max_message,
        )  # fmt: skip
        self.fake = FakeTransport()
        self.fake.protocol = self.ws
        self.ws._request = b"GET / HTTP/1.1\r\n\r\n"
        self.ws.connection_made(self.fake)
        accept = base64.b64encode(hashlib.sha1(self.ws._key + GUID).digest())
        self.fake.written.clear()
        self.ws.data_received(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )

    def feed(self, data: bytes) -> None:
        self.ws.data_received(data)

    def sent_frames(self) -> Iterator[tuple[int, bytes]]:
        """The client's frames, unmasked: (opcode, payload)."""
        data = bytes(self.fake.written)
        pos = 0
        while pos < len(data):
            opcode, length = data[pos] & 0x0F, data[pos + 1] & 0x7F
            assert data[pos + 1] & 0x80, "client frames are masked"
            pos += 2
            if length == 126:
                length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
            elif length == 127:
                length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
            mask, pos = data[pos : pos + 4], pos + 4
            yield opcode, mask_payload(data[pos : pos + length], mask)
            pos += length


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = False) -> bytes:
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = bytes((first, mask_bit | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + n.to_bytes(8, "big")
    if masked:
        return head + b"abcd" + mask_payload(payload, b"abcd")
    return head + payload


@pytest.fixture
def client() -> Iterator[Client]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop.run_until_complete(_make())
    finally:
        loop.close()
        asyncio.set_event_loop(None)


async def _make() -> Client:
    return Client()


def test_text_and_binary_messages_arrive_whole_even_split_byte_by_byte(client: Client) -> None:
    data = frame(1, "héllo".encode()) + frame(2, b"\x00\x01")
    for i in range(len(data)):
        client.feed(data[i : i + 1])
    assert client.messages == ["héllo", b"\x00\x01"]


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 200_000])
def test_7_16_and_64_bit_lengths(client: Client, size: int) -> None:
    client.feed(frame(2, b"x" * size))
    assert client.messages == [b"x" * size]


def test_fragments_are_joined_and_control_frames_may_come_between(client: Client) -> None:
    client.feed(frame(1, b"ab", fin=False))
    client.feed(frame(9, b"ping!"))  # a ping between fragments is answered at once
    client.feed(frame(0, b"cd", fin=False) + frame(0, b"ef"))
    assert client.messages == ["abcdef"]
    assert list(client.sent_frames()) == [(10, b"ping!")]


def fails_with(client: Client, code: int) -> None:
    assert client.closed and client.closed[0].code is None
    assert client.closed[0].reason.startswith(f"we closed {code}")
    assert list(client.sent_frames())[-1][0] == 8  # our close frame went out first
    assert list(client.sent_frames())[-1][1][:2] == code.to_bytes(2, "big")


def test_a_masked_server_frame_is_refused(client: Client) -> None:
    client.feed(frame(1, b"hi", masked=True))
    assert client.messages == []
    fails_with(client, 1002)


@pytest.mark.parametrize(
    "data",
    [
        frame(0, b"orphan"),  # a continuation with nothing to continue
        frame(1, b"a", fin=False) + frame(1, b"b"),  # a new message inside a fragmented one
        frame(5, b""),  # an unknown opcode
    ],
)
def test_fragmentation_errors_close_1002(client: Client, data: bytes) -> None:
    client.feed(data)
    fails_with(client, 1002)


def test_text_that_is_not_utf8_closes_1007(client: Client) -> None:
    client.feed(frame(1, b"\xff\xfe"))
    assert client.messages == []
    fails_with(client, 1007)


def test_an_oversize_frame_closes_1009_before_its_body_arrives() -> None:
    async def go() -> Client:
        small = Client(max_message=1000)
        small.feed(frame(2, b"x" * 1001)[:10])  # the header alone says too much
        return small

    small = asyncio.run(go())
    fails_with(small, 1009)


def test_fragments_that_add_up_past_the_limit_close_1009() -> None:
    async def go() -> Client:
        small = Client(max_message=1000)
        small.feed(frame(2, b"x" * 600, fin=False) + frame(0, b"x" * 600))
        return small

    fails_with(asyncio.run(go()), 1009)


async def test_a_server_close_is_echoed_and_reported_with_its_code() -> None:
    client = Client()
    client.feed(frame(8, (4000).to_bytes(2, "big") + b"bye"))
    assert list(client.sent_frames()) == [(8, (4000).to_bytes(2, "big"))]
    assert not client.ws.open
    client.fake.abort()  # the server then drops TCP
    assert [(c.code, c.reason, c.handshake) for c in client.closed] == [(4000, "bye", True)]


async def test_our_close_sends_the_code_and_refuses_further_sends() -> None:
    client = Client()
    client.ws.close(3000, "resume later")
    assert list(client.sent_frames()) == [(8, (3000).to_bytes(2, "big") + b"resume later")]
    with pytest.raises(ConnectionError):
        client.ws.send(b"late")
    client.feed(frame(8, (3000).to_bytes(2, "big")))
    client.fake.abort()
    assert client.closed[0].code == 3000 and client.closed[0].handshake


def test_sends_are_masked_text_or_binary(client: Client) -> None:
    client.ws.send(b'{"op":1}')
    client.ws.send(b"\x01", binary=True)
    assert list(client.sent_frames()) == [(1, b'{"op":1}'), (2, b"\x01")]
