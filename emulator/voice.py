"""The emulated voice server: voice gateway v8 over TLS (wss, as Discord serves it) and UDP.

It checks what a client sends the way Discord would and records every RTP packet: it
decrypts each with the session's mode and key, and keeps seq, timestamp, arrival time and
the Opus payload, so tests can prove audio arrived intact and on time. DAVE (end-to-end
encryption) is not emulated yet: sessions run at DAVE protocol version 0, and a server set to
require DAVE closes 4017 when the client offers none.

Written from Discord's documentation (topics/voice-connections), independently of
``voiceworker``: the packet layouts here are spelled out again on purpose.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import secrets
import ssl
import struct
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

__all__ = ["RtpRecord", "VoiceServer", "VoiceSessionRecord", "make_certificate"]

MODES = ["aead_aes256_gcm_rtpsize", "aead_xchacha20_poly1305_rtpsize"]


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
    arrival: float
    opus: bytes


@dataclass
class VoiceSessionRecord:
    """One client's voice session as the server saw it."""

    guild_id: str
    session_id: str
    ssrc: int
    mode: str = ""
    secret_key: bytes = b""
    speaking: list[int] = field(default_factory=list)
    packets: list[RtpRecord] = field(default_factory=list)
    undecryptable: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0  # server message seq (v8)
    client_address: tuple[str, int] | None = None


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: VoiceServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.on_datagram(data, addr)


class VoiceServer:
    """A voice server for every guild of the emulated world; sessions are keyed by the
    token the gateway handed out in VOICE_SERVER_UPDATE."""

    def __init__(self, host: str = "127.0.0.1", *, require_dave: bool = False) -> None:
        self.host = host
        self.require_dave = require_dave
        self.port = 0
        self.udp_port = 0
        self.pending: dict[str, tuple[str, str, str]] = {}  # token -> (guild, user, session)
        self.sessions: dict[int, VoiceSessionRecord] = {}  # by ssrc
        self.connections: list[ServerConnection] = []
        self.keepalives = 0
        self._live: dict[ServerConnection, VoiceSessionRecord] = {}  # identified connections
        self._dir = Path(tempfile.mkdtemp(prefix="shardline-voice-"))
        self.cert_file, self._key_file = make_certificate(host, self._dir)
        self._server: Server | None = None
        self._udp: _Udp | None = None
        self._changed = asyncio.Condition()

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
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Udp(self), local_addr=(self.host, 0)
        )
        self._udp = protocol
        self.udp_port = int(transport.get_extra_info("sockname")[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()

    async def close_session(self, code: int, reason: str = "") -> int:
        """Close every voice connection with ``code`` (4015 crash, 4014 disconnect...)."""
        connections = list(self.connections)
        for ws in connections:
            await ws.close(code, reason)
        return len(connections)

    async def member_speaks(self, user_id: int, frames: list[bytes]) -> int:
        """An emulated call member speaks: SPEAKING (op 5, user id and SSRC) on each client's
        voice websocket, then the Opus ``frames`` as RTP packets encrypted with each client's
        session key, to its UDP address. Returns the packets sent."""
        transport = self._udp.transport if self._udp else None
        ssrc = 0x7000_0000 + user_id % 0x0FFF_FFFF
        sent = 0
        for ws, record in list(self._live.items()):
            if record.client_address is None or transport is None or not record.secret_key:
                continue
            record.seq += 1
            speaking = {"user_id": str(user_id), "ssrc": ssrc, "speaking": 1}
            await ws.send(orjson.dumps({"op": 5, "d": speaking, "seq": record.seq}).decode())
            for n, opus in enumerate(frames):
                header = struct.pack(">BBHII", 0x80, 0x78, n, n * 960, ssrc)
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

    def expect(self, token: str, guild_id: str, user_id: str, session_id: str) -> None:
        """The gateway handed out ``token`` for this voice state: accept its IDENTIFY."""
        self.pending[token] = (guild_id, user_id, session_id)

    async def wait_until(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the voice websocket --------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        record: VoiceSessionRecord | None = None

        async def send(op: int, d: Any) -> None:
            assert record is not None
            record.seq += 1
            await ws.send(orjson.dumps({"op": op, "d": d, "seq": record.seq}).decode())

        try:
            await ws.send(orjson.dumps({"op": 8, "d": {"heartbeat_interval": 13750}}).decode())
            async for message in ws:
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
                    await send(9, None)
                    await self._notify()
                    continue
                if op == 0:
                    record = await self._identify(ws, d)
                    if record is None:
                        return
                    self._live[ws] = record
                    await send(
                        2,
                        {
                            "ssrc": record.ssrc,
                            "ip": self.host,
                            "port": self.udp_port,
                            "modes": MODES,
                            "heartbeat_interval": 1,
                        },
                    )
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
                    await send(
                        4,
                        {
                            "mode": mode,
                            "secret_key": list(record.secret_key),
                            "dave_protocol_version": 0,
                        },
                    )
                elif op == 3:
                    await ws.send(orjson.dumps({"op": 6, "d": {"t": (d or {}).get("t")}}).decode())
                elif op == 5:
                    record.speaking.append(int((d or {}).get("speaking", 0)))
                elif op == 7:
                    await send(9, None)
                await self._notify()
        except ConnectionClosed:
            pass
        finally:
            self.connections.remove(ws)
            self._live.pop(ws, None)
            await self._notify()

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
        if expected is None or expected != (
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
        record = VoiceSessionRecord(expected[0], expected[2], ssrc)
        self.sessions[ssrc] = record
        return record

    # -- UDP ------------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
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
            self.keepalives += 1  # a client's UDP keepalive
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
        record.packets.append(RtpRecord(seq, timestamp, ssrc, time.monotonic(), opus))
        asyncio.get_running_loop().create_task(self._notify())

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
