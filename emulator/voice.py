"""The emulated voice server: voice gateway v8 over TLS (wss, as Discord serves it) and UDP.

It checks what a client sends the way Discord would and records every RTP packet: it
decrypts each with the session's mode and key, and keeps seq, timestamp, arrival time and
the Opus payload, so tests can prove audio arrived intact and on time. DAVE runs for real:
the server is each call's MLS external sender (``emulator.dave.DaveCall``), and emulated call
members built on ``davey`` (:meth:`VoiceServer.add_member`) decrypt what clients send end to
end and speak to them. Clients that offer DAVE get protocol version 1 (unless the server runs
with ``dave=False``); a server set to require DAVE closes 4017 when the client offers none.

Written from Discord's documentation (topics/voice-connections), independently of
``voiceworker``: the packet layouts here are spelled out again on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import secrets
import shutil
import socket
import ssl
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from nacl import bindings
from nacl.exceptions import CryptoError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from emulator.dave import DaveCall, EmulatedMember, Outbound
from emulator.mls import ExternalSender

__all__ = ["RtpRecord", "VoiceServer", "VoiceSessionRecord", "make_certificate"]

MODES = ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]
# Closes after which the client comes back with RESUME: it stays a member of the call.
STAYS_IN_CALL = frozenset({None, 1006, 4000, 4009, 4015})
E2EE_MAGIC = b"\xfa\xfa"


def make_certificate(host: str, directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (cert, key): what a test trusts as its CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shardline emulator voice")])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([alt, x509.DNSName("localhost")]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "voice-cert.pem", directory / "voice-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class RtpRecord:
    seq: int
    timestamp: int
    ssrc: int
    arrival: float  # Unix time: the kernel's receive timestamp where there is one
    opus: bytes  # after end-to-end decryption, when the frame was E2EE and it decrypted
    e2ee: bool = False  # the frame came end-to-end encrypted (DAVE)


@dataclass
class VoiceSessionRecord:
    """One client's voice session as the server saw it."""

    guild_id: str
    session_id: str
    ssrc: int
    user_id: int = 0
    channel_id: int = 0
    max_dave: int = 0  # what the client offered in IDENTIFY
    dave_version: int = 0  # what the session description said
    mode: str = ""
    secret_key: bytes = b""
    speaking: list[int] = field(default_factory=list)
    packets: list[RtpRecord] = field(default_factory=list)
    undecryptable: int = 0
    e2ee_undecryptable: int = 0  # E2EE frames no emulated member could open
    received: list[dict[str, Any]] = field(default_factory=list)
    binary_ops: list[int] = field(default_factory=list)  # DAVE opcodes it sent as binary
    seq: int = 0  # server message seq (v8)
    client_address: tuple[str, int] | None = None


# Linux's SO_TIMESTAMPNS (= SCM_TIMESTAMPNS); Python's socket module does not name it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)


class _Udp:
    """The voice server's UDP socket. Each datagram's arrival is the kernel's receive
    timestamp (SO_TIMESTAMPNS) where there is one: when the packet arrived, not when this
    process got round to reading it, so the server's own scheduling never shows up as a
    client's jitter."""

    def __init__(self, server: VoiceServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.transport = self  # what callers send through (sendto, close)
        if SO_TIMESTAMPNS is not None:  # else arrivals are stamped when read
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # a full buffer drops the datagram, as UDP does
            self.sock.sendto(data, addr)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        for _ in range(256):  # what has arrived, then back to the loop
            try:
                data, ancillary, _, addr = self.sock.recvmsg(4096, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            arrival = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", payload[:16])
                    arrival = seconds + nanoseconds / 1e9
            self.server.on_datagram(data, addr, time.time() if arrival is None else arrival)


class VoiceServer:
    """A voice server for every guild of the emulated world; sessions are keyed by the
    token the gateway handed out in VOICE_SERVER_UPDATE."""

    def __init__(
        self, host: str = "127.0.0.1", *, require_dave: bool = False, dave: bool = True
    ) -> None:
        self.host = host
        self.require_dave = require_dave
        self.dave = dave  # offer DAVE protocol version 1 to clients that support it
        self.external_sender = ExternalSender()
        self.calls: dict[int, DaveCall] = {}  # by channel
        self.members: dict[int, dict[int, EmulatedMember]] = {}  # channel -> user -> member
        self.port = 0
        self.udp_port = 0
        # token -> (guild, user, session, channel)
        self.pending: dict[str, tuple[str, str, str, str]] = {}
        self.sessions: dict[int, VoiceSessionRecord] = {}  # by ssrc
        self.connections: list[ServerConnection] = []
        self.keepalives = 0
        self._live: dict[ServerConnection, VoiceSessionRecord] = {}  # identified connections
        self._dir = Path(tempfile.mkdtemp(prefix="shardline-voice-"))
        self.cert_file, self._key_file = make_certificate(host, self._dir)
        self._server: Server | None = None
        self._udp: _Udp | None = None
        self._changed = asyncio.Condition()
        self._notify_scheduled = False
        self.udp_deaf = False  # test hook: drop every datagram (no echo, no record)
        # Test hook: a voice server that misbehaves on purpose. "hello", "ready" and
        # "description" replace fields of those payloads (HELLO's d, READY's d, the session
        # description's d); "close_on_identify" is a list of close codes, one taken per
        # IDENTIFY, each answered by that close instead of READY.
        self.faults: dict[str, Any] = {}

    @property
    def ca_file(self) -> str:
        """Trust this file (discord.ca_file) to talk wss to this server."""
        return str(self.cert_file)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self._key_file)
        self._server = await serve(self._handle, self.host, 0, ssl=context, compression=None)
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):  # room for bursts from many sessions (kernel-capped)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setblocking(False)
        sock.bind((self.host, 0))
        self._udp = _Udp(self, sock)
        self.udp_port = int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._udp is not None:
            self._udp.close()
        shutil.rmtree(self._dir, ignore_errors=True)  # its private key goes with it

    async def close_session(self, code: int, reason: str = "") -> int:
        """Close every voice connection with ``code`` (4015 crash, 4014 disconnect...)."""
        connections = list(self.connections)
        for ws in connections:
            await ws.close(code, reason)
        return len(connections)

    async def member_speaks(self, user_id: int, frames: list[bytes]) -> int:
        """A call member speaks: SPEAKING (op 5, user id and SSRC) on each client's voice
        websocket, then the Opus ``frames`` as RTP packets encrypted with each client's
        session key, to its UDP address; end to end first when ``user_id`` is an emulated
        member of the client's call (:meth:`add_member`). Returns the packets sent."""
        transport = self._udp.transport if self._udp else None
        ssrc = 0x7000_0000 + user_id % 0x0FFF_FFFF
        sent = 0
        for ws, record in list(self._live.items()):
            if record.client_address is None or transport is None or not record.secret_key:
                continue
            member = self.members.get(record.channel_id, {}).get(user_id)
            record.seq += 1
            speaking = {"user_id": str(user_id), "ssrc": ssrc, "speaking": 1}
            await ws.send(orjson.dumps({"op": 5, "d": speaking, "seq": record.seq}).decode())
            for n, opus in enumerate(frames):
                header = struct.pack(">BBHII", 0x80, 0x78, n, n * 960, ssrc)
                if member is not None and record.dave_version > 0:
                    opus = member.encrypt(opus)  # end to end first, as a real member does
                transport.sendto(self._encrypt(record, header, opus, n), record.client_address)
                sent += 1
        return sent

    @staticmethod
    def _encrypt(record: VoiceSessionRecord, header: bytes, opus: bytes, counter: int) -> bytes:
        nonce4 = counter.to_bytes(4, "big")
        if record.mode == MODES[0]:
            sealed = bindings.crypto_aead_aes256gcm_encrypt(
                opus, header, nonce4 + bytes(8), record.secret_key
            )
        else:
            sealed = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
                opus, header, nonce4 + bytes(20), record.secret_key
            )
        return header + sealed + nonce4

    def resumes(self) -> int:
        """How many RESUMEs (op 7) clients have sent."""
        return sum(1 for r in self.sessions.values() for p in r.received if p.get("op") == 7)

    def expect(
        self, token: str, guild_id: str, user_id: str, session_id: str, channel_id: str
    ) -> None:
        """The gateway handed out ``token`` for this voice state: accept its IDENTIFY."""
        self.pending[token] = (guild_id, user_id, session_id, channel_id)

    async def wait_until(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        self._notify_scheduled = False
        async with self._changed:
            self._changed.notify_all()

    # -- the voice websocket --------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        record: VoiceSessionRecord | None = None

        async def send(op: int, d: Any) -> None:
            assert record is not None
            await self._send_json(ws, record, op, d)

        try:
            hello = {"heartbeat_interval": 13750, **self.faults.get("hello", {})}
            await ws.send(orjson.dumps({"op": 8, "d": hello}).decode())
            async for message in ws:
                if isinstance(message, bytes) and message[:1] != b"{":
                    if record is None or len(message) < 1:
                        await ws.close(4003, "Not authenticated.")
                        return
                    record.binary_ops.append(message[0])
                    await self._dave_from_client(record, message[0], message[1:])
                    await self._notify()
                    continue
                try:
                    payload = orjson.loads(message)
                    op, d = payload["op"], payload.get("d")
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    await ws.close(4002, "Failed to decode payload.")
                    return
                if record is not None:
                    record.received.append(payload)
                if op == 7 and record is None:
                    record = self._resume(d)
                    if record is None:
                        await ws.close(4006, "Session is no longer valid.")
                        return
                    record.received.append(payload)
                    self._live[ws] = record
                    await send(9, None)
                    await self._notify()
                    continue
                if op == 0:
                    record = await self._identify(ws, d)
                    if record is None:
                        return
                    closes = self.faults.get("close_on_identify")
                    if closes:
                        await ws.close(closes.pop(0), "fault injected")
                        return
                    self._live[ws] = record
                    ready = {
                        "ssrc": record.ssrc,
                        "ip": self.host,
                        "port": self.udp_port,
                        "modes": MODES,
                        "heartbeat_interval": 1,
                    }
                    await send(2, {**ready, **self.faults.get("ready", {})})
                elif record is None:
                    await ws.close(4003, "Not authenticated.")
                    return
                elif op == 1:
                    mode = (d or {}).get("data", {}).get("mode")
                    if mode not in MODES:
                        await ws.close(4016, "Unknown encryption mode.")
                        return
                    record.mode = mode
                    record.secret_key = secrets.token_bytes(32)
                    record.dave_version = 1 if self.dave and record.max_dave >= 1 else 0
                    description = {
                        "mode": mode,
                        "secret_key": list(record.secret_key),
                        "dave_protocol_version": record.dave_version,
                    }
                    await send(4, {**description, **self.faults.get("description", {})})
                    await self._enter_call(record)
                elif op == 3:
                    await ws.send(orjson.dumps({"op": 6, "d": {"t": (d or {}).get("t")}}).decode())
                elif op == 5:
                    record.speaking.append(int((d or {}).get("speaking", 0)))
                elif op == 7:
                    await send(9, None)
                elif op in (23, 31):
                    await self._dave_from_client(record, op, d)
                await self._notify()
        except ConnectionClosed:
            pass
        finally:
            self.connections.remove(ws)
            if self._live.pop(ws, None) is not None and record is not None:
                if ws.close_code not in STAYS_IN_CALL:
                    await self._leave_call(record)
            await self._notify()

    async def _send_json(
        self, ws: ServerConnection, record: VoiceSessionRecord, op: int, d: Any
    ) -> None:
        record.seq += 1
        await ws.send(orjson.dumps({"op": op, "d": d, "seq": record.seq}).decode())

    # -- DAVE -----------------------------------------------------------------------------

    def _call(self, channel_id: int) -> DaveCall:
        call = self.calls.get(channel_id)
        if call is None:
            call = self.calls[channel_id] = DaveCall(channel_id, self.external_sender)
        return call

    def _others(self, channel_id: int, user_id: int) -> list[int]:
        """Everybody else in the channel's call: connected clients and emulated members."""
        users = {r.user_id for r in self._live.values() if r.channel_id == channel_id}
        users |= set(self.members.get(channel_id, {}))
        users.discard(user_id)
        return sorted(users)

    async def _enter_call(self, record: VoiceSessionRecord) -> None:
        """A client's session is up: it learns who is there (op 11), the others learn of it,
        and with DAVE it gets the external sender (op 25)."""
        others = self._others(record.channel_id, record.user_id)
        live = self._live_by_user(record.channel_id)
        if others:
            await self._deliver_to(record, 11, {"user_ids": [str(u) for u in others]})
        for user in others:
            if user in live:
                await self._deliver_to(live[user], 11, {"user_ids": [str(record.user_id)]})
        call = self._call(record.channel_id)
        call.leave(record.user_id)  # a fresh session replaces any earlier membership
        if record.dave_version > 0:
            await self._deliver(record.channel_id, call.join(record.user_id))

    async def _leave_call(self, record: VoiceSessionRecord) -> None:
        live = self._live_by_user(record.channel_id)
        for user in self._others(record.channel_id, record.user_id):
            if user in live:
                await self._deliver_to(live[user], 13, {"user_id": str(record.user_id)})
        await self._deliver(record.channel_id, self._call(record.channel_id).leave(record.user_id))

    async def add_member(self, channel_id: int, user_id: int) -> EmulatedMember:
        """An emulated member joins the channel's call: clients see it connect (op 11) and,
        with DAVE, the group takes it in. It hears clients end to end and can speak."""
        member = EmulatedMember(user_id, channel_id)
        self.members.setdefault(channel_id, {})[user_id] = member
        for record in self._live_by_user(channel_id).values():
            await self._deliver_to(record, 11, {"user_ids": [str(user_id)]})
        if self.dave:
            await self._deliver(channel_id, self._call(channel_id).join(user_id))
        await self._notify()
        return member

    async def remove_member(self, channel_id: int, user_id: int) -> None:
        """The emulated member leaves: clients see it go (op 13); the group removes it."""
        self.members.get(channel_id, {}).pop(user_id, None)
        for record in self._live_by_user(channel_id).values():
            await self._deliver_to(record, 13, {"user_id": str(user_id)})
        await self._deliver(channel_id, self._call(channel_id).leave(user_id))
        await self._notify()

    def _live_by_user(self, channel_id: int) -> dict[int, VoiceSessionRecord]:
        return {r.user_id: r for r in self._live.values() if r.channel_id == channel_id}

    async def _dave_from_client(self, record: VoiceSessionRecord, op: int, payload: Any) -> None:
        await self._deliver(
            record.channel_id, self._dave_in(record.channel_id, record.user_id, op, payload)
        )

    def _dave_in(self, channel_id: int, user_id: int, op: int, payload: Any) -> list[Outbound]:
        """A member's DAVE message (26 key package, 28 commit, 23 ready, 31 invalid)."""
        call = self._call(channel_id)
        try:
            if op == 26 and isinstance(payload, bytes):
                return call.key_package(user_id, payload)
            if op == 28 and isinstance(payload, bytes):
                return call.commit(user_id, payload)
            if op in (23, 31) and isinstance(payload, dict):
                tid = int(payload["transition_id"])
                return call.ready(user_id, tid) if op == 23 else call.invalid(user_id, tid)
        except (KeyError, TypeError, ValueError):
            pass  # a malformed DAVE message changes nothing
        return []

    async def _deliver(self, channel_id: int, out: list[Outbound]) -> None:
        """Send each message to its client, or hand it to the emulated member it is for
        (whose answers are handled in turn)."""
        queue = list(out)
        while queue:
            message = queue.pop(0)
            member = self.members.get(channel_id, {}).get(message.user_id)
            if member is not None:
                for op, payload in member.receive(message.op, message.payload):
                    queue += self._dave_in(channel_id, message.user_id, op, payload)
                continue
            record = self._live_by_user(channel_id).get(message.user_id)
            if record is not None:
                await self._deliver_to(record, message.op, message.payload)

    async def _deliver_to(self, record: VoiceSessionRecord, op: int, payload: Any) -> None:
        ws = next((w for w, r in self._live.items() if r is record), None)
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed):
            if isinstance(payload, bytes):  # binary: [seq u16][opcode u8][payload]
                record.seq += 1
                await ws.send(struct.pack(">HB", record.seq & 0xFFFF, op) + payload)
            else:
                await self._send_json(ws, record, op, payload)

    def _resume(self, d: Any) -> VoiceSessionRecord | None:
        d = d if isinstance(d, dict) else {}
        for record in self.sessions.values():
            if record.session_id == str(d.get("session_id")) and record.guild_id == str(
                d.get("server_id")
            ):
                return record
        return None

    async def _identify(self, ws: ServerConnection, d: Any) -> VoiceSessionRecord | None:
        d = d if isinstance(d, dict) else {}
        expected = self.pending.get(str(d.get("token")))
        if expected is None or expected[:3] != (
            str(d.get("server_id")),
            str(d.get("user_id")),
            str(d.get("session_id")),
        ):
            await ws.close(4004, "Authentication failed.")
            return None
        if self.require_dave and not d.get("max_dave_protocol_version"):
            await ws.close(4017, "E2EE/DAVE protocol required.")
            return None
        ssrc = secrets.randbelow(2**31) + 1
        record = VoiceSessionRecord(expected[0], expected[2], ssrc, int(expected[1]))
        record.channel_id = int(expected[3])
        with contextlib.suppress(TypeError, ValueError):
            record.max_dave = int(d.get("max_dave_protocol_version") or 0)
        self.sessions[ssrc] = record
        return record

    # -- UDP ------------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: tuple[str, int], arrival: float) -> None:
        """One datagram that arrived at ``arrival`` (Unix time, seconds)."""
        if self.udp_deaf:
            return  # as if UDP were lost both ways
        transport = self._udp.transport if self._udp else None
        if len(data) == 74 and data[:2] == b"\x00\x01":
            ssrc = struct.unpack(">I", data[4:8])[0]
            if ssrc in self.sessions:
                self.sessions[ssrc].client_address = addr
            reply = struct.pack(">HHI64sH", 2, 70, ssrc, addr[0].encode(), addr[1])
            if transport is not None:
                transport.sendto(reply, addr)
            return
        if len(data) == 8:
            self.keepalives += 1  # a client's UDP keepalive: echoed, as Discord does
            if transport is not None:
                transport.sendto(data, addr)
            return
        if len(data) < 12 + 16 + 4 or data[0] >> 6 != 2:
            return
        ssrc = struct.unpack(">I", data[8:12])[0]
        record = self.sessions.get(ssrc)
        if record is None or not record.secret_key:
            return
        record.client_address = addr
        opus = self._decrypt(record, data)
        if opus is None:
            record.undecryptable += 1
            return
        seq, timestamp = struct.unpack(">HI", data[2:8])
        e2ee = opus.endswith(E2EE_MAGIC)
        if e2ee:
            opus = self._open_e2ee(record, opus)
        record.packets.append(RtpRecord(seq, timestamp, ssrc, arrival, opus, e2ee))
        if not self._notify_scheduled:  # one wake-up for a burst of packets, not one each
            self._notify_scheduled = True
            asyncio.get_running_loop().create_task(self._notify())

    def _open_e2ee(self, record: VoiceSessionRecord, frame: bytes) -> bytes:
        """Decrypt a DAVE frame as an emulated member of the call hears it; a frame none
        of them can open is counted and kept as it came."""
        for member in self.members.get(record.channel_id, {}).values():
            plain = member.decrypt(record.user_id, frame)
            if plain is not None:
                return plain
        record.e2ee_undecryptable += 1
        return frame

    @staticmethod
    def _decrypt(record: VoiceSessionRecord, data: bytes) -> bytes | None:
        csrc = data[0] & 0x0F
        extension = bool(data[0] & 0x10)
        aad_end = 12 + 4 * csrc + (4 if extension else 0)
        aad = data[:aad_end]
        if record.mode == MODES[0]:
            nonce, decrypt = data[-4:] + bytes(8), bindings.crypto_aead_aes256gcm_decrypt
        else:
            nonce = data[-4:] + bytes(20)
            decrypt = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt
        try:
            plain: bytes = decrypt(data[aad_end:-4], aad, nonce, record.secret_key)
        except CryptoError:
            return None
        if extension:
            words = int.from_bytes(data[aad_end - 2 : aad_end], "big")
            plain = plain[4 * words :]
        return plain
