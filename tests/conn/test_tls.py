"""The process-wide TLS client contexts: one per CA file, rebuilt when the file changes."""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

import pytest

from conn import tls
from emulator.voice import make_certificate

EMULATOR_CN = "shardline emulator voice"


def _trusted_names(context: ssl.SSLContext) -> list[str]:
    names = []
    for cert in context.get_ca_certs():
        for rdn in cert["subject"]:
            names += [value for key, value in rdn if key == "commonName"]
    return names


def test_the_default_context_is_built_once_and_verifies_hostnames() -> None:
    context = tls.client_context()
    assert context is tls.client_context()
    assert context.check_hostname
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert EMULATOR_CN not in _trusted_names(context)


def test_a_ca_file_gets_its_own_context_that_trusts_it(tmp_path: Path) -> None:
    ca, _key = make_certificate("127.0.0.1", tmp_path)
    context = tls.client_context(str(ca))
    assert context is not tls.client_context()
    assert context is tls.client_context(str(ca))
    assert EMULATOR_CN in _trusted_names(context)


def test_a_replaced_ca_file_is_read_again(tmp_path: Path) -> None:
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    ca, _ = make_certificate("127.0.0.1", first_dir)
    first = tls.client_context(str(ca))
    replacement, _ = make_certificate("127.0.0.1", second_dir)
    ca.write_bytes(replacement.read_bytes() + replacement.read_bytes())
    os.utime(ca, ns=(10**18, 10**18))  # a different mtime even on a coarse clock
    second = tls.client_context(str(ca))
    assert second is not first
    assert second is tls.client_context(str(ca))


def test_an_empty_ca_file_means_none() -> None:
    assert tls.client_context("") is tls.client_context()


def test_a_missing_ca_file_raises_naming_it(tmp_path: Path) -> None:
    with pytest.raises(OSError, match=re.escape("missing.pem")):
        tls.client_context(str(tmp_path / "missing.pem"))


def test_a_file_that_is_not_pem_raises(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        tls.client_context(str(bogus))
