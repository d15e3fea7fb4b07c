"""Checkpoint signatures.

Every so often the writer signs the chain's head (sequence number, hash, time). HMAC-SHA256 with a
configured secret is the default; with an Ed25519 private key file the checkpoints are signed with
it, and anyone holding only the public key can check them. A signed checkpoint pins everything
before it: rewriting the chain from some record on (recomputing every hash) is caught at the first
checkpoint after the edit, and deleting the newest records is caught by the last checkpoint.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import os
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from privacy.files import write_once


class SigningError(Exception):
    """A key cannot be used; worded for the operator."""


def checkpoint_message(seq: int, head_hash: str, at: float) -> bytes:
    return f"wardgate-audit-checkpoint\n{seq}\n{head_hash}\n{at:.6f}".encode()


class Signer(Protocol):
    algorithm: str
    key_id: str

    def sign(self, message: bytes) -> str: ...

    def verify(self, message: bytes, signature: str) -> bool: ...


class HmacSigner:
    algorithm = "hmac-sha256"

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise SigningError("the audit HMAC key must be at least 16 bytes")
        self.key = key
        # Names the key without revealing it, so that verify can say which key a checkpoint needs.
        self.key_id = hashlib.sha256(b"wardgate-key-id" + key).hexdigest()[:16]

    def sign(self, message: bytes) -> str:
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def verify(self, message: bytes, signature: str) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


class Ed25519Signer:
    algorithm = "ed25519"

    def __init__(self, private_key: Ed25519PrivateKey | None, public_key: Ed25519PublicKey) -> None:
        self.private_key = private_key
        self.public_key = public_key
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]

    def sign(self, message: bytes) -> str:
        if self.private_key is None:
            raise SigningError("only a public key was given: it can verify checkpoints, not sign them")
        return base64.b64encode(self.private_key.sign(message)).decode()

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            self.public_key.verify(base64.b64decode(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def load_ed25519(path: Path) -> Ed25519Signer:
    """A PEM private key (signs and verifies) or public key (verifies only)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"cannot read the audit signing key {path}: {exc.strerror or exc}") from None
    try:
        if b"PRIVATE KEY" in data:
            private_key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(private_key, Ed25519PrivateKey):
                raise SigningError(f"{path}: not an Ed25519 key")
            return Ed25519Signer(private_key, private_key.public_key())
        public_key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a PEM Ed25519 key: {exc}") from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 key")
    return Ed25519Signer(None, public_key)


def generate_ed25519(private_path: Path) -> Path:
    """Write a new Ed25519 key pair (`wardgate audit keygen`); returns the public key's path."""
    key = Ed25519PrivateKey.generate()
    _write_private(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    public_path = private_path.with_suffix(".pub")
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return public_path


def hmac_key_from_file(path: Path, create: bool, what: str = "audit HMAC key") -> bytes:
    """The HMAC key kept in `path` (hex); with `create`, a new random one is written there first
    if the file does not exist, so that a gateway with no key configured still signs checkpoints.
    Two processes starting at once write one key between them: the second reads the first's."""
    if create and not path.exists():
        write_once(path, os.urandom(32).hex().encode() + b"\n")
    try:
        return bytes.fromhex(path.read_text().strip())
    except OSError as exc:
        raise SigningError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise SigningError(f"{path}: the {what} file must hold the key in hex") from None


def _write_private(path: Path, data: bytes) -> None:
    if not write_once(path, data):
        raise FileExistsError(errno.EEXIST, "a key exists there already", str(path))
