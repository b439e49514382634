"""The voice server's part of MLS (RFC 9420) for DAVE: it is the group's external sender.

Discord's voice server never joins a call's MLS group; it signs external proposals that add
and remove members, and the members commit them. This module encodes what that takes: the
``ExternalSender`` a client installs (op 25) and the proposal messages it processes (op 27),
with the DAVE ciphersuite's P-256/SHA-256 signatures. It also splits a client's op 28
(commit, then an optional Welcome) apart.

Written from RFC 9420 (sections 2.1.2 varints, 5.1.2 SignWithLabel, 6 message framing, 12.1
proposals) and daveprotocol.com (opcodes 25, 27, 28).
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "ExternalSender",
    "MlsDecodeError",
    "read_vector",
    "split_commit_welcome",
    "varint",
    "vector",
]

MLS10 = 1
WIRE_PUBLIC_MESSAGE = 1
SENDER_EXTERNAL = 2
CONTENT_PROPOSAL = 2
PROPOSAL_ADD = 1
PROPOSAL_REMOVE = 3
CREDENTIAL_BASIC = 1
CIPHERSUITE_P256 = 2  # MLS_128_DHKEMP256_AES128GCM_SHA256_P256, DAVE's
OPERATION_APPEND = 0


class MlsDecodeError(ValueError):
    """Bytes that are not the MLS structure expected; the message says where."""


def varint(n: int) -> bytes:
    """RFC 9420 variable-length integer: 1, 2 or 4 bytes, the top two bits give the size."""
    if n < 1 << 6:
        return bytes((n,))
    if n < 1 << 14:
        return struct.pack(">H", n | 0x4000)
    if n < 1 << 30:
        return struct.pack(">I", n | 0x8000_0000)
    raise ValueError(f"{n} is too large for an MLS varint")


def vector(data: bytes) -> bytes:
    """``opaque data<V>``: a varint length, then the bytes."""
    return varint(len(data)) + data


def read_vector(data: bytes, at: int) -> tuple[bytes, int]:
    """Read ``opaque<V>`` at ``at``: (the bytes, the offset after them)."""
    if at >= len(data):
        raise MlsDecodeError(f"vector expected at {at}, got the end")
    prefix = data[at] >> 6
    if prefix == 0:
        length, at = data[at], at + 1
    elif prefix == 1:
        length, at = int.from_bytes(data[at : at + 2], "big") & 0x3FFF, at + 2
    elif prefix == 2:
        length, at = int.from_bytes(data[at : at + 4], "big") & 0x3FFF_FFFF, at + 4
    else:
        raise MlsDecodeError(f"invalid varint prefix at {at}")
    if at + length > len(data):
        raise MlsDecodeError(f"vector of {length} bytes at {at} runs past the end")
    return data[at : at + length], at + length


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Op 28's payload is an MLSMessage commit, then optionally a bare ``Welcome``, with no
    lengths between. A Welcome is ``cipher_suite u16, secrets<V>, encrypted_group_info<V>``
    and ends the payload: find the first offset where one parses to exactly the end."""
    header = struct.pack(">H", CIPHERSUITE_P256)
    at = data.find(header, 4)
    while at != -1:
        try:
            _, end = read_vector(data, at + 2)
            _, end = read_vector(data, end)
        except MlsDecodeError:
            end = -1
        if end == len(data):
            return data[:at], data[at:]
        at = data.find(header, at + 1)
    return data, None


class ExternalSender:
    """A P-256 signing key and the basic credential that names the voice server."""

    def __init__(self, identity: bytes = b"shardline-emulator") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.identity = identity

    def package(self) -> bytes:
        """Op 25's payload: ``ExternalSender{signature_key<V>, credential}``."""
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return vector(public) + struct.pack(">H", CREDENTIAL_BASIC) + vector(self.identity)

    def proposals(
        self,
        group_id: int,
        epoch: int,
        *,
        add: list[bytes] = (),  # type: ignore[assignment]
        remove: list[int] = (),  # type: ignore[assignment]
    ) -> bytes:
        """Op 27's payload for an append: the operation byte and a vector of signed
        proposal messages (removals by leaf index first, then additions of key packages)."""
        bodies = [struct.pack(">HI", PROPOSAL_REMOVE, leaf) for leaf in remove]
        bodies += [struct.pack(">H", PROPOSAL_ADD) + kp for kp in add]
        messages = b"".join(self._message(group_id, epoch, body) for body in bodies)
        return bytes((OPERATION_APPEND,)) + vector(messages)

    def _message(self, group_id: int, epoch: int, proposal: bytes) -> bytes:
        """One ``MLSMessage`` carrying a ``PublicMessage`` proposal from external sender 0."""
        content = (
            vector(group_id.to_bytes(8, "big"))
            + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0)
            + vector(b"")  # authenticated_data
            + bytes((CONTENT_PROPOSAL,))
            + proposal
        )
        framing = struct.pack(">HH", MLS10, WIRE_PUBLIC_MESSAGE)
        # FramedContentTBS has no GroupContext for an external sender (RFC 9420 6.1).
        sign_content = vector(b"MLS 1.0 FramedContentTBS") + vector(framing + content)
        signature = self.key.sign(sign_content, ec.ECDSA(hashes.SHA256()))
        return framing + content + vector(signature)
