"""Streaming encryption of backup objects (infra/backupagent/crypto.py): round trips, tamper and passphrase checks."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import threading
import tracemalloc

import pytest
from hypothesis import given, settings, strategies as st

from infra.backupagent import BackupAgentError
from infra.backupagent import crypto
from infra.backupagent.crypto import CorruptObject, DecryptError, WrongPassphrase

PASSPHRASE = "correct horse battery staple, unit test"
CHEAP = {"chunk_size": 64, "scrypt_log2_n": 4}  # small chunks and a cheap KDF so many cases run quickly
MARKER = b"PLAINTEXT-MARKER-7f3a"


def seal(data: bytes, passphrase: str = PASSPHRASE, **options) -> bytes:
    out = io.BytesIO()
    crypto.encrypt(io.BytesIO(data), out, passphrase, **{**CHEAP, **options})
    return out.getvalue()


def open_sealed(sealed: bytes, passphrase: str = PASSPHRASE, **kwargs) -> bytes:
    out = io.BytesIO()
    crypto.decrypt(io.BytesIO(sealed), out, passphrase, **kwargs)
    return out.getvalue()


def chunks_of(sealed: bytes, chunk_size: int = CHEAP["chunk_size"]) -> list[bytes]:
    body, step = sealed[crypto.HEADER_LEN:], chunk_size + crypto.TAG_LEN
    return [body[i:i + step] for i in range(0, len(body), step)]


class TrickleReader(io.RawIOBase):
    """A stream that returns at most 7 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(7, len(buffer), len(self.data))
        buffer[:n], self.data = self.data[:n], self.data[n:]
        return n


@settings(max_examples=60, deadline=None)
@given(size=st.one_of(st.sampled_from([0, 1, 63, 64, 65, 128, 129]), st.integers(0, 700)),
       seed=st.binary(min_size=1, max_size=16))
def test_any_size_round_trips_including_empty_and_chunk_boundaries(size, seed):
    data = (seed * (size // len(seed) + 1))[:size]
    assert open_sealed(seal(data)) == data


@pytest.mark.parametrize("size", [0, crypto.CHUNK_SIZE - 1, crypto.CHUNK_SIZE, crypto.CHUNK_SIZE + 1])
def test_default_parameters_round_trip_around_the_one_mib_chunk(size):
    data = os.urandom(size)
    out = io.BytesIO()
    crypto.encrypt(io.BytesIO(data), out, PASSPHRASE)
    assert open_sealed(out.getvalue()) == data


def test_reads_that_return_few_bytes_at_a_time_still_round_trip():
    data = os.urandom(1000)
    out = io.BytesIO()
    crypto.encrypt(TrickleReader(data), out, PASSPHRASE, **CHEAP)
    back = io.BytesIO()
    crypto.decrypt(TrickleReader(out.getvalue()), back, PASSPHRASE)
    assert back.getvalue() == data


def test_the_header_carries_the_default_kdf_parameters_and_the_scheme_says_the_same():
    out = io.BytesIO()
    crypto.encrypt(io.BytesIO(b"x"), out, PASSPHRASE)
    magic, version, log2_n, r, p, chunk_size = struct.unpack(">8sBBBBI", out.getvalue()[:16])
    assert (magic, version) == (b"SINBKENC", 1)
    assert crypto.SCHEME["kdf_params"] == {"n": 2**log2_n, "r": r, "p": p, "salt_bytes": 16}
    assert crypto.SCHEME["chunk_size"] == chunk_size == 1024 * 1024
    assert crypto.SCHEME["cipher"] == "AES-256-GCM" and crypto.SCHEME["format"] == "sin-backup-enc/1"


def test_the_output_contains_no_plaintext_and_differs_each_time():
    data = b"before " + MARKER + b" after" * 50
    first, second = seal(data), seal(data)
    assert MARKER not in first and b"after" not in first
    assert first != second  # fresh salt and nonce prefix per object


def test_a_unicode_passphrase_in_either_normal_form_decrypts():
    composed, decomposed = "caf\u00e9-pass", "cafe\u0301-pass"
    assert open_sealed(seal(b"data", composed), decomposed) == b"data"


def test_a_wrong_passphrase_is_named_with_the_fix_and_writes_nothing():
    sealed = seal(MARKER * 10)
    out = io.BytesIO()
    with pytest.raises(WrongPassphrase) as refused:
        crypto.decrypt(io.BytesIO(sealed), out, "another passphrase", name="s3://b/p/base/x/postgres.tar.gz.enc")
    message = str(refused.value)
    assert "s3://b/p/base/x/postgres.tar.gz.enc" in message
    assert "another backupPassphrase" in message and "pulumi config set --secret backupPassphrase" in message
    assert "another passphrase" not in message and PASSPHRASE not in message
    assert out.getvalue() == b""
    assert isinstance(refused.value, DecryptError) and isinstance(refused.value, BackupAgentError)


def test_truncation_at_a_chunk_boundary_is_detected():
    sealed = seal(os.urandom(64 * 3))
    with pytest.raises(CorruptObject, match="truncated"):
        open_sealed(sealed[:crypto.HEADER_LEN + 2 * (64 + crypto.TAG_LEN)])


def test_truncation_inside_a_chunk_is_detected():
    sealed = seal(os.urandom(100))
    with pytest.raises(CorruptObject):
        open_sealed(sealed[:-1])


def test_a_header_without_any_chunk_is_detected():
    with pytest.raises(CorruptObject):
        open_sealed(seal(b"")[:crypto.HEADER_LEN])


def test_reordered_chunks_are_detected():
    sealed = seal(os.urandom(64 * 3))
    first, second, *rest = chunks_of(sealed)
    with pytest.raises(CorruptObject, match="chunk 0"):
        open_sealed(sealed[:crypto.HEADER_LEN] + second + first + b"".join(rest))


def test_appended_data_is_detected_even_after_a_full_last_chunk():
    for size in (64 * 2, 70):
        sealed = seal(os.urandom(size))
        with pytest.raises(CorruptObject):
            open_sealed(sealed + b"extra")
        with pytest.raises(CorruptObject):
            open_sealed(sealed + chunks_of(sealed)[-1])


def test_chunks_of_another_object_with_the_same_passphrase_are_refused():
    one, other = seal(os.urandom(128)), seal(os.urandom(128))
    with pytest.raises(CorruptObject):
        open_sealed(one[:crypto.HEADER_LEN] + other[crypto.HEADER_LEN:])


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), position=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected_and_never_yields_other_plaintext(data, position, bit):
    sealed = bytearray(seal(data))
    position %= len(sealed)
    sealed[position] ^= 1 << bit
    with pytest.raises(DecryptError):
        open_sealed(bytes(sealed))


def test_something_that_is_not_our_format_is_named_as_such():
    with pytest.raises(CorruptObject) as refused:
        open_sealed(b"\x1f\x8b" + b"\0" * 200, name="base/x/redis.tar.gz.enc")
    assert "base/x/redis.tar.gz.enc is not an encrypted backup" in str(refused.value)


def test_a_forged_header_asking_for_huge_kdf_memory_is_refused_before_deriving():
    sealed = bytearray(seal(b"data"))
    sealed[9] = 40  # scrypt log2(N)
    fields = bytes(sealed[:crypto.HEADER_LEN - 8])
    sealed[crypto.HEADER_LEN - 8:crypto.HEADER_LEN] = hashlib.sha256(fields).digest()[:8]
    with pytest.raises(CorruptObject, match="outside the accepted limits"):
        open_sealed(bytes(sealed))


def test_an_empty_passphrase_is_refused_before_writing():
    out = io.BytesIO()
    with pytest.raises(crypto.CryptoError, match="backupPassphrase is empty"):
        crypto.encrypt(io.BytesIO(b"data"), out, "")
    assert out.getvalue() == b""


def test_a_one_gib_stream_round_trips_through_a_pipe_in_constant_memory():
    size, block = 1024**3, b"\x5a" * (1024 * 1024)
    read_end, write_end = os.pipe()
    digest, errors = hashlib.sha256(), []

    class Blocks(io.RawIOBase):
        left = size

        def readable(self):
            return True

        def readinto(self, buffer):
            n = min(len(buffer), self.left, len(block))
            buffer[:n] = block[:n]
            self.left -= n
            return n

    class Hasher(io.RawIOBase):
        count = 0

        def writable(self):
            return True

        def write(self, data):
            digest.update(data)
            self.count += len(data)
            return len(data)

    def produce():
        try:
            with open(write_end, "wb") as pipe:
                crypto.encrypt(io.BufferedReader(Blocks()), pipe, PASSPHRASE)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    tracemalloc.start()
    try:
        producer = threading.Thread(target=produce)
        producer.start()
        sink = Hasher()
        with open(read_end, "rb") as pipe:
            crypto.decrypt(pipe, sink, PASSPHRASE)
        producer.join()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not errors
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)
    assert sink.count == size and digest.digest() == expected.digest()
    assert peak < 16 * 1024 * 1024


def test_files_are_written_complete_under_their_name_and_round_trip(tmp_path):
    plain, sealed, back = tmp_path / "postgres.tar.gz", tmp_path / "postgres.tar.gz.enc", tmp_path / "restored"
    plain.write_bytes(MARKER + os.urandom(3000))
    crypto.encrypt_file(plain, sealed, PASSPHRASE)
    crypto.decrypt_file(sealed, back, PASSPHRASE)
    assert back.read_bytes() == plain.read_bytes()
    assert MARKER not in sealed.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["postgres.tar.gz", "postgres.tar.gz.enc", "restored"]


def test_a_failed_file_decryption_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    plain, sealed, back = tmp_path / "plain", tmp_path / "plain.enc", tmp_path / "restored"
    plain.write_bytes(os.urandom(3 * crypto.CHUNK_SIZE))
    crypto.encrypt_file(plain, sealed, PASSPHRASE)
    sealed.write_bytes(sealed.read_bytes()[:-1])
    with pytest.raises(CorruptObject) as refused:
        crypto.decrypt_file(sealed, back, PASSPHRASE)
    assert str(sealed) in str(refused.value)
    back.write_bytes(b"previous")
    with pytest.raises(WrongPassphrase):
        crypto.decrypt_file(sealed, back, "not it")
    assert back.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "plain.enc", "restored"]


def test_a_damaged_header_is_reported_as_corruption_not_as_a_wrong_passphrase():
    sealed = bytearray(seal(b"data"))
    sealed[20] ^= 0x01  # inside the salt
    with pytest.raises(CorruptObject, match="damaged header"):
        open_sealed(bytes(sealed))
