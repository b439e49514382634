"""A worker's two links against real ZeroMQ sockets in this process: the publisher (waits
for the bus, never blocks, counts drops) and the control link (framing both ways)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from ipc.codec import BATCH, CodecError, Envelope, control_to, decode_bus, unpack_batch
from ipc.control import Shutdown, WorkerHello
from ipc.errors import DecodeError
from ipc.links import ControlLink, EventPublisher, context


@pytest.fixture
def bus(tmp_path: Path) -> Any:
    sub = context().socket(zmq.XSUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.bind(f"ipc://{tmp_path}/bus.sock")
    yield sub, f"ipc://{tmp_path}/bus.sock"
    sub.close(linger=0)


async def subscribed(sub: Any, publisher: EventPublisher) -> bool:
    """The bus subscribes to everything, as the supervisor's does; an XSUB attaches a new
    publisher (and replays its subscription) only when its own thread uses it."""
    sub.send(b"\x01")
    waiter = asyncio.ensure_future(publisher.wait_subscribed(timeout=10))
    while not waiter.done():
        sub.getsockopt(zmq.EVENTS)
        await asyncio.sleep(0.005)
    return waiter.result()


async def test_the_publisher_waits_for_the_bus_then_sends_a_dispatch_unchanged(bus: Any) -> None:
    sub, endpoint = bus
    publisher = EventPublisher(endpoint, "shard:3")
    try:
        assert await subscribed(sub, publisher)
        raw = b'{"t":"MESSAGE_CREATE","s":7,"op":0,"d":{"id":"1"}}'
        publisher.dispatch("MESSAGE_CREATE", raw, 7, "sess")
        publisher.event(DecodeError(message="bad", source="shard:3"))
        assert sub.poll(10_000)
        topic, envelope, body = sub.recv_multipart()
        assert topic == b"MESSAGE_CREATE shard:3" and body == raw
        meta = orjson.loads(envelope)
        assert isinstance(meta["received_ns"], str) and meta["received_ns"].isdigit()
        assert Envelope.decode(envelope).seq == 7 and Envelope.decode(envelope).session == "sess"
        assert sub.poll(10_000)
        _, event = decode_bus(sub.recv_multipart())
        assert isinstance(event, DecodeError) and event.message == "bad"
        assert (publisher.published, publisher.dropped) == (2, 0)
    finally:
        publisher.close(linger=0)


async def test_nobody_subscribing_is_reported_not_waited_for_forever(tmp_path: Path) -> None:
    publisher = EventPublisher(f"ipc://{tmp_path}/nobody.sock", "shard:0")
    try:
        assert not await publisher.wait_subscribed(timeout=0.05)
    finally:
        publisher.close(linger=0)


async def test_a_full_pipe_refuses_instead_of_blocking(bus: Any) -> None:
    """Nobody reads: once the pipe is full, a batch is refused at once, and a dispatch once
    the batch is full too (the shard holds it and what follows, shards/loop.py); what was
    taken arrives whole and in order, in batches."""
    sub, endpoint = bus
    publisher = EventPublisher(endpoint, "shard:0", hwm=10)
    try:
        sub.setsockopt(zmq.RCVHWM, 10)
        assert await subscribed(sub, publisher)
        body = b'{"pad":"%s"}' % (b"x" * 4000)
        taken = [n for n in range(5000) if publisher.dispatch("TYPING_START", body, n, "s")]
        assert 0 < len(taken) < 5000
        assert publisher.published + publisher.pending == len(taken)
        assert publisher.dropped == 0  # refusing is not dropping: the caller decides
        seqs: list[int] = []
        while len(seqs) < publisher.published:
            frames = sub.recv_multipart()
            assert frames[0] == BATCH
            for topic, envelope, raw in unpack_batch(frames[1]):
                assert topic.startswith(b"TYPING_START") and raw == body
                seqs.append(Envelope.decode(envelope).seq or 0)
        assert seqs == taken[: publisher.published]
    finally:
        publisher.close(linger=0)


async def test_the_control_link_frames_both_ways(tmp_path: Path) -> None:
    router = context().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"ipc://{tmp_path}/control.sock")
    link = ControlLink(f"ipc://{tmp_path}/control.sock", "shard:5")
    try:
        link.hello("shard", "5")
        assert router.poll(10_000)
        identity, type_name, body = router.recv_multipart()
        assert (identity, type_name) == (b"shard:5", WorkerHello.type_name.encode())
        assert orjson.loads(body)["worker_id"] == "5"
        router.send_multipart(control_to("shard:5", Shutdown()))
        assert isinstance(await asyncio.wait_for(link.receive(), 10), Shutdown)
        router.send_multipart([b"shard:5", b"control.nonsense", b"{}"])
        with pytest.raises(CodecError):
            await asyncio.wait_for(link.receive(), 10)
    finally:
        link.close()
        router.close(linger=0)
