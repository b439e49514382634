"""The voice worker's sans-I/O pieces: RTP numbering, AEAD packets, IP discovery, the clock."""

from __future__ import annotations

import pytest

from voiceworker.clock import FRAME, SendClock
from voiceworker.crypto import (
    AES_GCM,
    XCHACHA,
    DecryptError,
    TransportCipher,
    aes_gcm_available,
    choose_mode,
)
from voiceworker.discovery import (
    DISCOVERY_SIZE,
    DiscoveryError,
    build_request,
    build_response,
    parse_response,
)
from voiceworker.rtp import RtpError, RtpPacketizer, parse_rtp

KEY = bytes(range(32))
MODES = [XCHACHA] + ([AES_GCM] if aes_gcm_available() else [])


def test_rtp_headers_advance_and_wrap() -> None:
    rtp = RtpPacketizer(ssrc=0xDEADBEEF, seq=0xFFFF, timestamp=0xFFFFFFFF - 959)
    first, second = parse_rtp(rtp.next_header()), parse_rtp(rtp.next_header())
    assert (first.seq, first.timestamp, first.ssrc) == (0xFFFF, 0xFFFFFFFF - 959, 0xDEADBEEF)
    assert (second.seq, second.timestamp) == (0, 0)  # both wrapped
    assert first.payload_type == 0x78 and first.unencrypted_size == 12
    with pytest.raises(RtpError, match="too short"):
        parse_rtp(b"\x80\x78")
    with pytest.raises(RtpError, match="version"):
        parse_rtp(bytes(12))


@pytest.mark.parametrize("mode", MODES)
def test_aead_round_trip_nonce_and_tamper(mode: str) -> None:
    sender, receiver = TransportCipher(mode, KEY), TransportCipher(mode, KEY)
    rtp = RtpPacketizer(ssrc=7)
    opus = b"\xf8\xff\xfe" * 20
    packets = [sender.encrypt(rtp.next_header(), opus) for _ in range(3)]
    assert [p[-4:] for p in packets] == [(n).to_bytes(4, "big") for n in range(3)]
    assert len(packets[0]) == 12 + len(opus) + 16 + 4
    header, payload = receiver.decrypt(packets[2])
    assert payload == opus and parse_rtp(header).seq == 2
    tampered = bytearray(packets[1])
    tampered[3] ^= 1  # the header is authenticated too
    with pytest.raises(DecryptError, match="authentication"):
        receiver.decrypt(bytes(tampered))
    with pytest.raises(DecryptError):
        TransportCipher(mode, bytes(32)).decrypt(packets[0])


def test_header_extension_body_is_encrypted_then_stripped() -> None:
    cipher = TransportCipher(XCHACHA, KEY)
    header = bytes([0x90, 0x78]) + (5).to_bytes(2, "big") + bytes(8) + b"\xbe\xde\x00\x01"
    packet = cipher.encrypt(header, b"\x10\x20\x30\x40" + b"opus")  # 1 word of extension
    aad, payload = TransportCipher(XCHACHA, KEY).decrypt(packet)
    assert aad == header and payload == b"opus"


def test_mode_choice_prefers_aes_when_the_hardware_has_it() -> None:
    assert choose_mode([XCHACHA]) == XCHACHA
    assert choose_mode([AES_GCM, XCHACHA]) == (AES_GCM if aes_gcm_available() else XCHACHA)
    with pytest.raises(ValueError, match="no common encryption mode"):
        choose_mode(["xsalsa20_poly1305"])


def test_ip_discovery_packets() -> None:
    request = build_request(1234)
    assert len(request) == DISCOVERY_SIZE == 74
    assert request[:8] == b"\x00\x01\x00\x46\x00\x00\x04\xd2"
    response = build_response(1234, "203.0.113.7", 50001)
    assert parse_response(response, 1234) == ("203.0.113.7", 50001)
    with pytest.raises(DiscoveryError, match="expected 74"):
        parse_response(response[:10])
    with pytest.raises(DiscoveryError, match="SSRC"):
        parse_response(response, 99)
    with pytest.raises(DiscoveryError, match="0x2 response"):
        parse_response(request)


def test_send_clock_uses_absolute_deadlines() -> None:
    clock = SendClock(start=100.0)
    assert clock.deadline() == 100.0
    clock.sent_at(100.001)
    clock.sent_at(100.0205)  # 0.5 ms late: on time
    assert clock.deadline() == pytest.approx(100.0 + 2 * FRAME)  # no drift from lateness
    clock.sent_at(100.050)  # 10 ms late
    assert clock.late == 1
    assert clock.behind(100.101) == 3  # deadlines at .06, .08, .10 have passed
    stats = clock.stats()
    assert stats.frames == 3 and stats.max_ms == pytest.approx(10.0)
    clock.restart(200.0)
    assert clock.deadline() == 200.0 and clock.late == 1
