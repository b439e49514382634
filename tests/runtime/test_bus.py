"""The event bus: each subscriber gets exactly the frames published, filtered by prefix;
one that stops reading is held to its byte budget and its drops are counted."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from ipc.codec import (
    BATCH,
    DUPLICATE,
    SUBSCRIBE,
    SUBSCRIBE_BATCHED,
    Envelope,
    bus_messages,
    pack_batch,
    unpack_batch,
)
from ipc.links import EventPublisher
from runtime.bus import PAUSE_BYTES, EventBus, PeerAddress


@contextmanager
def running_bus(tmp_path: Path, buffer_bytes: int) -> Iterator[tuple[EventBus, zmq.Context[Any]]]:
    ctx: zmq.Context[Any] = zmq.Context()
    bus = EventBus(
        ctx, f"ipc://{tmp_path}/in.sock", f"ipc://{tmp_path}/ev.sock", buffer_bytes=buffer_bytes
    )
    bus.start()
    try:
        yield bus, ctx
    finally:
        close_all(ctx, [bus])


_open: list[zmq.Socket[Any]] = []


def close_all(ctx: zmq.Context[Any], buses: list[EventBus]) -> None:
    """Close the test's sockets, end the context, and wait for the buses' threads."""
    for sock in list(_open):
        sock.close(linger=0)
    _open.clear()
    ctx.term()
    for bus in buses:
        bus.join()


def socket(ctx: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    _open.append(sock)
    return sock


def subscriber(
    ctx: zmq.Context[Any], tmp_path: Path, name: bytes, *prefixes: bytes, batched: bool = False
) -> zmq.Socket[Any]:
    sock = socket(ctx, zmq.DEALER)
    sock.setsockopt(zmq.RCVHWM, 10)
    sock.connect(f"ipc://{tmp_path}/ev.sock")
    sock.send_multipart([SUBSCRIBE_BATCHED if batched else SUBSCRIBE, name, *prefixes])
    return sock


def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def message(topic: bytes, n: int, size: int = 0) -> list[bytes]:
    return [topic, b"envelope-%d" % n, b"x" * size]


def receive(sock: zmq.Socket[Any], timeout_ms: int = 10_000) -> list[bytes]:
    assert sock.poll(timeout_ms), "nothing arrived"
    return sock.recv_multipart()


def test_subscribers_get_their_prefixes_and_a_stalled_one_is_bounded(tmp_path: Path) -> None:
    budget = 2_000_000
    with running_bus(tmp_path, buffer_bytes=budget) as (bus, ctx):
        everything = subscriber(ctx, tmp_path, b"fast")
        only_typing = subscriber(ctx, tmp_path, b"typing", b"TYPING_START")
        stalled = subscriber(ctx, tmp_path, b"stalled")  # does not read, for now
        until(lambda: len(bus.stats()) == 3)
        pub = socket(ctx, zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.connect(f"ipc://{tmp_path}/in.sock")
        until(lambda: (pub.send_multipart(message(b"PROBE", 0)), bus.received > 0)[1])
        sent = [message(b"MESSAGE_CREATE x", n, 1000) for n in range(5000)]
        sent.insert(2500, message(b"TYPING_START x", 5000))
        got: list[list[bytes]] = []
        for start in range(0, len(sent), 50):  # the fast subscriber keeps up, batch by batch
            for frames in sent[start : start + 50]:
                pub.send_multipart(frames)
            while len(got) < min(start + 50, len(sent)):
                frames = receive(everything)
                if frames[0] != b"PROBE":
                    got.append(frames)
        assert got == sent  # every frame, in order, unchanged
        frames = receive(only_typing)
        while frames[0] == b"PROBE":
            frames = receive(only_typing)
        assert frames == sent[2500]
        stats = {s.name: s.to_json() for s in bus.stats()}
        slow = stats["stalled"]
        assert 0 < slow["queued_bytes"] <= budget
        assert slow["dropped"] > 0 and slow["dropped_bytes"] >= slow["dropped"] * 1000
        assert stats["fast"]["dropped"] == 0 and stats["typing"]["dropped"] == 0
        # It reads again: what it gets is in order, and what it missed was counted.
        seen = []
        while (frames := receive(stalled))[0] == b"PROBE" or len(seen) < 100:
            if frames[0] != b"PROBE":
                seen.append(sent.index(frames))
        assert seen == sorted(seen)


def test_a_batch_goes_whole_to_who_takes_batches_and_one_by_one_to_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with running_bus(tmp_path, buffer_bytes=1 << 20) as (bus, ctx):
        subs = {
            "all-batched": subscriber(ctx, tmp_path, b"all-batched", batched=True),
            "typing-batched": subscriber(
                ctx, tmp_path, b"typing-batched", b"T", b"MARK", batched=True
            ),
            "one-typing": subscriber(ctx, tmp_path, b"one-typing", b"TYPING_START 7", b"MARK"),
            "all": subscriber(ctx, tmp_path, b"all"),
        }
        until(lambda: len(bus.stats()) == len(subs))
        pub = socket(ctx, zmq.PUB)
        pub.connect(f"ipc://{tmp_path}/in.sock")
        until(lambda: (pub.send_multipart(message(b"PROBE", 0)), bus.received > 0)[1])
        sent = [
            message(b"TYPING_START %d" % (n % 8) if n % 3 else b"MESSAGE_CREATE x", n, n)
            for n in range(12)
        ]
        pub.send_multipart([BATCH, b"\x05\x00\x00\x00broken"])  # dropped, with a log line
        batch = [BATCH, pack_batch([frame for frames in sent for frame in frames])]
        pub.send_multipart(batch)
        pub.send_multipart(message(b"MARK", 0))

        def until_mark(sock: zmq.Socket[Any]) -> list[list[bytes]]:
            got = []
            while (frames := receive(sock))[0] != b"MARK":
                if frames[0] != b"PROBE":
                    got.append(frames)
            return got

        assert until_mark(subs["all-batched"]) == [batch]  # as it came
        [typing_batch] = until_mark(subs["typing-batched"])  # the part it wants, one batch
        assert typing_batch[0] == BATCH
        assert unpack_batch(typing_batch[1]) == [f for f in sent if f[0].startswith(b"T")]
        assert until_mark(subs["one-typing"]) == [sent[7]]  # one message: as it always was
        assert until_mark(subs["all"]) == sent  # one by one, in order
        delivered = {s.name: s.delivered for s in bus.stats()}  # events, not messages
        assert delivered["all-batched"] == delivered["all"]
        assert delivered["typing-batched"] == len(unpack_batch(typing_batch[1])) + 1  # MARK
        assert "broken batch from a worker" in caplog.text


def test_a_burst_every_subscriber_is_behind_on_waits_in_the_publisher_not_in_the_bus(
    tmp_path: Path,
) -> None:
    """One subscriber, reading slower than the shard publishes: the bus stops reading once
    PAUSE_BYTES wait for it, so the publisher is refused (a shard holds and stops reading
    the gateway) instead of the bus queueing up to its buffer and dropping."""
    body = b'{"pad":"%s"}' % (b"x" * 40_000)
    total = 300  # 12 MB: three times the subscriber's buffer
    with running_bus(tmp_path, buffer_bytes=4_000_000) as (bus, ctx):
        app = subscriber(ctx, tmp_path, b"app", batched=True)
        until(lambda: len(bus.stats()) == 1)
        publisher = EventPublisher(f"ipc://{tmp_path}/in.sock", "shard:0", hwm=10)
        sent = [0]
        try:
            assert asyncio.run(publisher.wait_subscribed(10))

            def publish() -> bool:
                """Publish the next one (each sent alone); False when refused."""
                if not publisher.dispatch("MESSAGE_CREATE", body, sent[0], "s"):
                    return False
                sent[0] += 1
                return publisher.flush()

            # Nobody reads: the bus takes what comes until the app is PAUSE_BYTES behind.
            until(lambda: bus.paused or (publish() and False))
            while publish():  # the pipes on the way fill, then the publisher is refused
                pass
            assert bus.paused and sent[0] < total
            queued = bus.stats()[0].queued_bytes
            assert PAUSE_BYTES <= queued < 4_000_000
            seqs: list[int] = []

            def read_on() -> bool:
                """The app reads what came; the publisher goes on as it can (as a shard
                retries a held batch)."""
                if sent[0] < total:
                    publish()
                else:
                    publisher.flush()
                while app.poll(0):
                    for frames in bus_messages(app.recv_multipart()):
                        seqs.append(Envelope.decode(frames[1]).seq or 0)
                return len(seqs) >= total

            until(read_on, timeout=60)
            assert seqs == list(range(total))  # every one, in order
            assert bus.stats()[0].dropped == 0 and not bus.paused
        finally:
            publisher.close(linger=0)


def test_a_message_that_is_not_a_subscription_is_refused_with_a_log(tmp_path: Path) -> None:
    with running_bus(tmp_path, buffer_bytes=1 << 20) as (bus, ctx):
        odd = socket(ctx, zmq.DEALER)
        odd.connect(f"ipc://{tmp_path}/ev.sock")
        odd.send_multipart([b"HELLO"])
        good = subscriber(ctx, tmp_path, b"good")
        until(lambda: [s.name for s in bus.stats()] == ["good"])
        assert good is not None


def test_a_filtered_subscriber_is_told_exactly_what_it_lost(tmp_path: Path) -> None:
    from ipc.codec import decode_bus
    from ipc.errors import EventsDropped

    with running_bus(tmp_path, buffer_bytes=200_000) as (bus, ctx):
        typing = subscriber(ctx, tmp_path, b"typing", b"TYPING_START ")  # stalls at first
        marks = subscriber(ctx, tmp_path, b"marks", b"MARK")  # keeps up: shows what was handled
        until(lambda: len(bus.stats()) == 2)
        pub = socket(ctx, zmq.PUB)
        pub.setsockopt(zmq.SNDHWM, 0)
        pub.connect(f"ipc://{tmp_path}/in.sock")
        until(lambda: (pub.send_multipart(message(b"PROBE", 0)), bus.received > 0)[1])
        for n in range(2000):  # other types between: its seq would show gaps that are not loss
            pub.send_multipart(message(b"MESSAGE_CREATE x", n, 100))
            pub.send_multipart(message(b"TYPING_START x", n, 1000))
        pub.send_multipart(message(b"MARK", 0))
        assert receive(marks)[0] == b"MARK"  # the bus handles in order: every drop is counted
        dropped = {s.name: s.dropped for s in bus.stats()}["typing"]
        assert dropped > 0
        got: list[list[bytes]] = []

        def drained() -> bool:  # read what came; true once the bus holds nothing for it
            while typing.poll(0):
                got.append(typing.recv_multipart())
            return {s.name: s.queued_bytes for s in bus.stats()}["typing"] == 0

        until(drained)
        pub.send_multipart(message(b"TYPING_START x", 9999, 10))  # after the loss
        while not got or got[-1][1] != b"envelope-9999":
            got.append(receive(typing))
        # One notice per loss, each just before the first event after it: one loss, unless
        # the kernel's socket buffer took a few messages mid-burst and split it in two.
        notices = [n for n, frames in enumerate(got) if frames[0].startswith(b"shardline.")]
        assert notices and all(got[n + 1][0] == b"TYPING_START x" for n in notices)
        told = [e for e in (decode_bus(got[n])[1] for n in notices) if isinstance(e, EventsDropped)]
        assert len(told) == len(notices) and sum(e.dropped for e in told) == dropped
        typing_events = [f for f in got if f[0] == b"TYPING_START x"]
        assert len(typing_events) - 1 + dropped == 2000  # nothing lost without a word


@contextmanager
def host_buses(
    tmp_path: Path, names: tuple[str, ...], *, second_input: bool = False
) -> Iterator[tuple[zmq.Context[Any], dict[str, EventBus]]]:
    """One bus per host name, each pushing its events to every other (as a fleet's
    supervisors do), each its own directory under ``tmp_path``; all closed at the end."""
    ctx: zmq.Context[Any] = zmq.Context()
    buses = {}
    for name in names:
        (tmp_path / name).mkdir()
        buses[name] = EventBus(
            ctx,
            f"ipc://{tmp_path}/{name}/in.sock",
            f"ipc://{tmp_path}/{name}/ev.sock",
            peer_in=f"ipc://{tmp_path}/{name}/peers.sock",
            host=name,
            bus_in_b=f"ipc://{tmp_path}/{name}/in-b.sock" if second_input else "",
        )
        buses[name].start()
    try:
        for name, bus in buses.items():
            others = {
                o: PeerAddress(f"ipc://{tmp_path}/{o}/peers.sock", batches=True)
                for o in names
                if o != name
            }
            assert bus.set_peers(others).wait(5)
            assert set(bus.links) == set(others)
        yield ctx, buses
    finally:
        close_all(ctx, list(buses.values()))


def test_a_hosts_events_reach_the_other_hosts_subscribers_and_go_no_further(
    tmp_path: Path,
) -> None:
    """Three buses as three hosts: what one publishes (in batches) reaches every host's
    subscribers once; what a host receives from another is never passed on to a third."""
    names = ("a", "b", "c")
    with host_buses(tmp_path, names) as (ctx, buses):
        subs = {}
        for name in names:
            sock = socket(ctx, zmq.DEALER)
            sock.connect(f"ipc://{tmp_path}/{name}/ev.sock")
            sock.send_multipart([SUBSCRIBE, b"app-" + name.encode(), b"MESSAGE_CREATE"])
            subs[name] = sock
        until(lambda: all(len(b.stats()) == 3 for b in buses.values()))  # 2 links + 1 app
        publisher = socket(ctx, zmq.PUB)
        publisher.connect(f"ipc://{tmp_path}/b/in.sock")
        until(lambda: (publisher.send_multipart(message(b"PROBE", 0)), buses["b"].received)[1])
        for start in range(0, 100, 10):
            batch = [f for n in range(start, start + 10) for f in message(b"MESSAGE_CREATE ", n)]
            publisher.send_multipart([BATCH, pack_batch(batch)])
        for name, sock in subs.items():
            got = [receive(sock)[1] for _ in range(100)]
            assert got == [b"envelope-%d" % n for n in range(100)], name
            assert not sock.poll(300), f"{name} got a message twice"  # nothing passed on
        assert buses["a"].peer_received >= 100 and buses["c"].peer_received >= 100  # + PROBEs
        assert buses["b"].peer_received == 0
        # a host that leaves the fleet gets nothing more
        assert buses["b"].set_peers({"a": PeerAddress(f"ipc://{tmp_path}/a/peers.sock")}).wait(5)
        assert set(buses["b"].links) == {"a"}
        publisher.send_multipart(message(b"MESSAGE_CREATE ", 100))
        assert receive(subs["a"])[1] == b"envelope-100"
        assert not subs["c"].poll(300)


def test_a_host_of_an_older_version_gets_single_events_not_batches(tmp_path: Path) -> None:
    """A host whose entry does not say it takes batches (a rolling upgrade of the fleet) is
    sent each event of a batch as its own message, in order, with the generation's tag."""
    with host_buses(tmp_path, ("a",)) as (ctx, buses):
        old_host = socket(ctx, zmq.PULL)
        old_host.bind(f"ipc://{tmp_path}/old-peers.sock")
        older = PeerAddress(f"ipc://{tmp_path}/old-peers.sock")  # (batches=False)
        assert buses["a"].set_peers({"old": older}).wait(5)
        assert buses["a"].set_generation(b"g1").wait(5)  # a fleet resharded once
        publisher = socket(ctx, zmq.PUB)
        publisher.connect(f"ipc://{tmp_path}/a/in.sock")
        until(lambda: (publisher.send_multipart(message(b"PROBE", 0)), buses["a"].received)[1])
        batch = [f for n in range(5) for f in message(b"MESSAGE_CREATE ", n)]
        publisher.send_multipart([BATCH, pack_batch(batch)])
        got = []
        while len(got) < 5:
            frames = receive(old_host)
            if frames[0] != b"PROBE":
                got.append(frames)
        assert got == [[*message(b"MESSAGE_CREATE ", n), b"g1"] for n in range(5)]


def dispatch(n: int) -> list[bytes]:
    """A gateway dispatch as a shard publishes it (the same message in either generation)."""
    body = b'{"op":0,"t":"MESSAGE_CREATE","s":1,"d":{"id":"%d"}}' % n
    return [b"MESSAGE_CREATE shard", b'{"kind":"dispatch","n":%d}' % n, body]


@pytest.mark.parametrize("switched", [True, False])
def test_after_a_cut_over_the_retired_generations_late_dispatches_are_not_delivered(
    tmp_path: Path, switched: bool
) -> None:
    """A retired generation's shards may still have dispatches on their way when the
    cut-over ends (held while the bus was behind, flushed as they close): the applications
    had those from the other generation, so they are dropped (counted); the retired shards'
    own events (errors, checkpoints) still go. Aborted, the new generation is the retired one."""
    with host_buses(tmp_path, ("a",), second_input=True) as (ctx, buses):
        bus = buses["a"]
        app = socket(ctx, zmq.DEALER)
        app.connect(f"ipc://{tmp_path}/a/ev.sock")
        app.send_multipart([SUBSCRIBE, b"app", b""])
        until(lambda: len(bus.stats()) == 1)
        inputs = {"a": socket(ctx, zmq.PUB), "b": socket(ctx, zmq.PUB)}
        inputs["a"].connect(f"ipc://{tmp_path}/a/in.sock")
        inputs["b"].connect(f"ipc://{tmp_path}/a/in-b.sock")

        def probed(pub: zmq.Socket[Any], before: int) -> bool:  # the bus reads this input
            pub.send_multipart(message(b"PROBE", 0))
            return bus.received > before

        for pub in inputs.values():
            until(functools.partial(probed, pub, bus.received))
        while app.poll(200):
            app.recv_multipart()  # the probes
        assert bus.reshard("begin", "a").wait(5)
        assert bus.reshard("switch" if switched else "abort").wait(5)
        assert bus.reshard("finish").wait(5)
        retired, current = ("a", "b") if switched else ("b", "a")
        batch = [frame for n in (1, 2) for frame in dispatch(n)]
        inputs[retired].send_multipart([BATCH, pack_batch(batch)])  # late, from the retired
        inputs[retired].send_multipart(message(b"shardline.error x", 7))  # its own event
        inputs[current].send_multipart(dispatch(3))
        got = [receive(app)[1] for _ in range(2)]
        assert sorted(got) == sorted([b"envelope-7", b'{"kind":"dispatch","n":3}'])
        assert not app.poll(300) and bus.other_generation == 2


def test_during_a_fleet_reshard_each_host_cuts_over_on_every_hosts_events(
    tmp_path: Path,
) -> None:
    """Two buses as two hosts resharding: each pushes both generations' events to the other
    tagged with their generation, and each host's own cut-over gives its application every
    message once; a dispatch of a generation a host does not stage is not delivered."""
    with host_buses(tmp_path, ("a", "b"), second_input=True) as (ctx, buses):
        app = socket(ctx, zmq.DEALER)
        app.connect(f"ipc://{tmp_path}/a/ev.sock")
        app.send_multipart([SUBSCRIBE, b"app", b""])
        until(lambda: len(buses["a"].stats()) == 2)
        old_on_a = socket(ctx, zmq.PUB)  # host a's running generation
        old_on_a.connect(f"ipc://{tmp_path}/a/in.sock")
        new_on_b = socket(ctx, zmq.PUB)  # host b's share of the next generation
        new_on_b.connect(f"ipc://{tmp_path}/b/in-b.sock")
        until(lambda: (old_on_a.send_multipart(message(b"PROBE", 0)), buses["a"].received)[1])
        until(lambda: (new_on_b.send_multipart(message(b"PROBE", 0)), buses["b"].received)[1])
        while app.poll(200):
            app.recv_multipart()  # the probes
        # Host b stages generation g1 first: its dispatches do not reach a's app before a does
        assert buses["b"].reshard("begin", "a", 1 << 20, (b"", b"g1:")).wait(5)
        new_on_b.send_multipart(dispatch(0))
        until(lambda: buses["a"].other_generation == 1)
        assert buses["a"].reshard("begin", "a", 1 << 20, (b"", b"g1:")).wait(5)
        for n in (1, 2):  # both generations carry messages 1 and 2; only the new one has 3
            old_on_a.send_multipart(dispatch(n))
            new_on_b.send_multipart(dispatch(n))
        new_on_b.send_multipart(dispatch(3))
        got = [receive(app)[1] for _ in range(2)]
        assert got == [b'{"kind":"dispatch","n":1}', b'{"kind":"dispatch","n":2}']
        cutover = buses["a"].cutover
        assert cutover is not None
        until(lambda: cutover.staged == 3)
        assert buses["a"].reshard("switch").wait(5)
        after = [receive(app) for _ in range(3)]
        assert [f[0] for f in after[:2]] == [DUPLICATE, DUPLICATE]  # 1 and 2, delivered already
        assert after[2][1] == b'{"kind":"dispatch","n":3}'
        old_on_a.send_multipart(dispatch(4))  # the old generation after the switch: not again
        new_on_b.send_multipart(dispatch(4))
        assert receive(app)[1] == b'{"kind":"dispatch","n":4}'
        assert not app.poll(300)
        assert buses["a"].reshard("finish").wait(5)
        new_on_b.send_multipart(dispatch(5))  # g1 is host a's generation now
        assert receive(app)[1] == b'{"kind":"dispatch","n":5}'
