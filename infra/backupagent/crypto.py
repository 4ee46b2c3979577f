"""Passphrase-based streaming encryption of backup objects before they leave the Docker host.

Layout of an encrypted object (all integers big-endian)::

    header   magic "SINBKENC" | version u8 | scrypt log2(N) u8 | r u8 | p u8 | chunk size u32
             | salt 16 | nonce prefix 7 | key check 32 | header digest 8 (SHA-256 of the above)
    chunks   AES-256-GCM(plaintext chunk), 16-byte tag each; every chunk but the last holds
             exactly `chunk size` plaintext bytes; there is always at least one (possibly empty) chunk

Keys: scrypt(passphrase NFC UTF-8, salt) -> 32 bytes -> HKDF-SHA256 -> AES key (32) + key check (32).
Nonces follow the STREAM construction: prefix (7) | chunk counter u32 | last-chunk flag u8, so a
truncated, reordered, extended or modified object fails authentication. Every chunk also
authenticates the whole header, so no header field can be changed unnoticed either.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import struct
import tempfile
import unicodedata
from pathlib import Path
from typing import BinaryIO, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from . import BackupAgentError

MAGIC = b"SINBKENC"
VERSION = 1
CHUNK_SIZE = 1024 * 1024
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # ~85 ms and 32 MiB on the agent's host
SALT_LEN, PREFIX_LEN, CHECK_LEN, DIGEST_LEN, TAG_LEN = 16, 7, 32, 8, 16
_FIELDS = struct.Struct(f">8sBBBBI{SALT_LEN}s{PREFIX_LEN}s{CHECK_LEN}s")
HEADER_LEN = _FIELDS.size + DIGEST_LEN
_HKDF_INFO = b"sin-datastores backup v1: aes-256-gcm key | key check"
_MAX_COUNTER = 2**32 - 1
# Limits a header must respect before it is trusted with memory and CPU (a forged header
# must not make the restore allocate gigabytes).
_MAX_LOG2_N, _MAX_R, _MAX_P, _MAX_CHUNK = 20, 32, 16, 64 * 1024 * 1024

SCHEME = {
    "format": f"sin-backup-enc/{VERSION}",
    "cipher": "AES-256-GCM",
    "construction": "STREAM: nonce = 7-byte random prefix | 32-bit chunk counter | last-chunk flag; header as AAD",
    "kdf": "scrypt",
    "kdf_params": {"n": 2**SCRYPT_LOG2_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt_bytes": SALT_LEN},
    "key_expansion": "HKDF-SHA256 -> AES key + key check",
    "passphrase_encoding": "UTF-8 of NFC",
    "chunk_size": CHUNK_SIZE,
}
"""How backups are encrypted, for manifests (a reader can tell the scheme without the code)."""


class CryptoError(BackupAgentError):
    """Encrypting or decrypting a backup object failed."""


class DecryptError(CryptoError):
    """An object could not be decrypted; nothing unauthenticated was written."""


class WrongPassphrase(DecryptError):
    """The object's key check does not match the configured passphrase."""


class CorruptObject(DecryptError):
    """The object is not in this format, or was truncated or modified."""


def _object(name: Optional[str]) -> str:
    return name if name else "the encrypted object"


def _key_and_check(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> tuple[bytes, bytes]:
    """The AES key and the key check value the passphrase yields under these header parameters."""
    if not isinstance(passphrase, str) or not passphrase:
        raise CryptoError("backupPassphrase is empty or not text; expected a non-empty passphrase; "
                          "set one with: pulumi config set --secret backupPassphrase (it prompts for the value)")
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    master = Scrypt(salt=salt, length=32, n=2**log2_n, r=r, p=p).derive(secret)
    both = HKDF(algorithm=hashes.SHA256(), length=32 + CHECK_LEN, salt=None, info=_HKDF_INFO).derive(master)
    return both[:32], both[32:]


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def _read_exactly(src: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, fewer only at the end of the stream (pipes may return short reads)."""
    parts, missing = [], size
    while missing:
        part = src.read(missing)
        if not part:
            break
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


def encrypt(src: BinaryIO, dst: BinaryIO, passphrase: str, *, chunk_size: int = CHUNK_SIZE,
            scrypt_log2_n: int = SCRYPT_LOG2_N) -> None:
    """Write `src` encrypted to `dst`, holding at most two chunks in memory."""
    if not 1 <= chunk_size <= _MAX_CHUNK:
        raise CryptoError(f"chunk size {chunk_size} is outside 1-{_MAX_CHUNK}; use the default {CHUNK_SIZE}")
    salt, prefix = secrets.token_bytes(SALT_LEN), secrets.token_bytes(PREFIX_LEN)
    key, check = _key_and_check(passphrase, salt, scrypt_log2_n, SCRYPT_R, SCRYPT_P)
    fields = _FIELDS.pack(MAGIC, VERSION, scrypt_log2_n, SCRYPT_R, SCRYPT_P, chunk_size, salt, prefix, check)
    header = fields + hashlib.sha256(fields).digest()[:DIGEST_LEN]
    dst.write(header)
    aead, counter = AESGCM(key), 0
    chunk = _read_exactly(src, chunk_size)
    while True:
        following = _read_exactly(src, chunk_size) if len(chunk) == chunk_size else b""
        last = not following
        if counter > _MAX_COUNTER:
            raise CryptoError(f"the input is larger than {_MAX_COUNTER} chunks of {chunk_size} bytes; "
                              "split it or use a larger chunk size")
        dst.write(aead.encrypt(_nonce(prefix, counter, last), chunk, header))
        if last:
            return
        chunk, counter = following, counter + 1


def _parse_header(header: bytes, name: Optional[str]) -> tuple:
    """The header's fields, once it is known to be this format, intact and within limits."""
    what = _object(name)
    if len(header) < HEADER_LEN or not header.startswith(MAGIC):
        found = "fewer bytes than a header" if len(header) < HEADER_LEN else f"starts with {header[:8]!r}"
        raise CorruptObject(f"{what} is not an encrypted backup (expected {HEADER_LEN} header bytes starting "
                            f"with {MAGIC!r}; found {found}); check that the object name points at a "
                            "*.enc file of a complete backup")
    fields, digest = header[:_FIELDS.size], header[_FIELDS.size:]
    if not hmac.compare_digest(hashlib.sha256(fields).digest()[:DIGEST_LEN], digest):
        raise CorruptObject(f"{what} has a damaged header (its digest does not match its fields); "
                            "the object was modified or corrupted in storage: restore from another backup")
    magic, version, log2_n, r, p, chunk_size, salt, prefix, check = _FIELDS.unpack(fields)
    if version != VERSION:
        raise CorruptObject(f"{what} is in encryption format version {version}, this code reads version "
                            f"{VERSION}; restore it with the agent version that wrote it")
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P and 1 <= chunk_size <= _MAX_CHUNK):
        raise CorruptObject(f"{what} has header parameters outside the accepted limits (scrypt log2 N "
                            f"{log2_n} <= {_MAX_LOG2_N}, r {r} <= {_MAX_R}, p {p} <= {_MAX_P}, chunk size "
                            f"{chunk_size} <= {_MAX_CHUNK}); it was not written by this agent: restore from another backup")
    return log2_n, r, p, chunk_size, salt, prefix, check


def decrypt(src: BinaryIO, dst: BinaryIO, passphrase: str, *, name: Optional[str] = None) -> None:
    """Write the plaintext of `src` to `dst`, chunk by chunk, each only after it is authenticated.

    A wrong passphrase is detected before anything is written. On CorruptObject raised
    mid-stream, `dst` holds an authentic but incomplete prefix: use decrypt_file, or discard it.
    """
    what = _object(name)
    header = _read_exactly(src, HEADER_LEN)
    log2_n, r, p, chunk_size, salt, prefix, check = _parse_header(header, name)
    key, expected = _key_and_check(passphrase, salt, log2_n, r, p)
    if not hmac.compare_digest(check, expected):
        raise WrongPassphrase(f"{what} was encrypted with another backupPassphrase (its key check does not "
                              "match the configured one); set the passphrase that was configured when this "
                              "backup was taken: pulumi config set --secret backupPassphrase (it prompts for "
                              "the value), then retry")
    aead, counter, sealed_size = AESGCM(key), 0, chunk_size + TAG_LEN
    sealed = _read_exactly(src, sealed_size)
    while True:
        following = _read_exactly(src, sealed_size) if len(sealed) == sealed_size else b""
        last = not following
        try:
            plain = aead.decrypt(_nonce(prefix, counter, last), sealed, header)
        except InvalidTag:
            where = "its end" if last else f"chunk {counter}"
            raise CorruptObject(f"{what} fails authentication at {where} (expected chunks sealed in order, "
                                "the last one marked last; found a truncated, reordered, extended or modified "
                                "object); it is not usable: restore from another backup") from None
        dst.write(plain)
        if last:
            return
        sealed, counter = following, counter + 1


def _write_atomically(dst: Path, fill) -> None:
    """Create `dst` complete or not at all: fill a temp file beside it, fsync, rename."""
    dst = Path(dst)
    fd, temp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, dst)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    directory = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def encrypt_file(src: Path, dst: Path, passphrase: str) -> None:
    """Encrypt file `src` into `dst`, which appears only once complete."""
    with open(src, "rb") as source:
        _write_atomically(Path(dst), lambda out: encrypt(source, out, passphrase))


def decrypt_file(src: Path, dst: Path, passphrase: str, *, name: Optional[str] = None) -> None:
    """Decrypt file `src` into `dst`, which appears only once every chunk is authenticated."""
    with open(src, "rb") as source:
        _write_atomically(Path(dst), lambda out: decrypt(source, out, passphrase, name=name or str(src)))
