"""Voice transport encryption: the two ``_rtpsize`` AEAD modes Discord still accepts.

Packet = unencrypted RTP header part (AAD) || ciphertext || 16-byte tag || 4-byte big-endian
nonce counter. The nonce is the counter zero-padded to 12 bytes (AES-256-GCM) or 24 bytes
(XChaCha20-Poly1305). AES-GCM needs AES hardware in libsodium, so it is probed once.
"""

from __future__ import annotations

import functools

from nacl import bindings
from nacl.exceptions import CryptoError

from voiceworker.rtp import RtpError, extension_body_size, parse_rtp

__all__ = [
    "AES_GCM",
    "MODES",
    "XCHACHA",
    "DecryptError",
    "TransportCipher",
    "aes_gcm_available",
    "choose_mode",
]

AES_GCM = "aead_aes256_gcm_rtpsize"
XCHACHA = "aead_xchacha20_poly1305_rtpsize"
MODES = (AES_GCM, XCHACHA)  # in order of preference


class DecryptError(ValueError):
    """A packet that does not decrypt (wrong key, tampered, truncated, not ours)."""


@functools.cache
def aes_gcm_available() -> bool:
    """libsodium offers AES-256-GCM only with AES hardware; try it once."""
    try:
        bindings.crypto_aead_aes256gcm_encrypt(b"", b"", bytes(12), bytes(32))
    except Exception:
        return False
    return True


def choose_mode(offered: list[str]) -> str:
    """The best mode the server offers that we can do; raises ValueError naming both lists."""
    for mode in MODES:
        if mode in offered and (mode != AES_GCM or aes_gcm_available()):
            return mode
    raise ValueError(f"no common encryption mode: server offers {offered}, we support {MODES}")


class TransportCipher:
    def __init__(self, mode: str, secret_key: bytes) -> None:
        if mode not in MODES:
            raise ValueError(f"unsupported mode {mode!r}; supported: {MODES}")
        if len(secret_key) != 32:
            raise ValueError(f"secret key must be 32 bytes, not {len(secret_key)}")
        self.mode = mode
        self.key = bytes(secret_key)
        self.counter = 0
        if mode == AES_GCM:
            self._encrypt = bindings.crypto_aead_aes256gcm_encrypt
            self._decrypt = bindings.crypto_aead_aes256gcm_decrypt
            self._nonce_size = 12
        else:
            self._encrypt = bindings.crypto_aead_xchacha20poly1305_ietf_encrypt
            self._decrypt = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt
            self._nonce_size = 24

    def encrypt(self, header: bytes, payload: bytes) -> bytes:
        """One packet: the header (AAD), the sealed payload, the 4-byte nonce counter."""
        nonce4 = self.counter.to_bytes(4, "big")
        self.counter = (self.counter + 1) & 0xFFFFFFFF
        nonce = nonce4 + bytes(self._nonce_size - 4)
        return header + self._encrypt(payload, header, nonce, self.key) + nonce4

    def decrypt(self, packet: bytes) -> tuple[bytes, bytes]:
        """(the unencrypted header part, the payload without any header extension body)."""
        try:
            header = parse_rtp(packet)
        except RtpError as exc:
            raise DecryptError(str(exc)) from None
        aad_end = header.unencrypted_size
        if len(packet) < aad_end + 16 + 4:
            raise DecryptError("packet too short for tag and nonce")
        nonce = packet[-4:] + bytes(self._nonce_size - 4)
        aad = packet[:aad_end]
        try:
            plain = self._decrypt(packet[aad_end:-4], aad, nonce, self.key)
        except CryptoError:
            raise DecryptError("packet failed authentication") from None
        return aad, plain[extension_body_size(packet, header) :]
