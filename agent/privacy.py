"""Personal information at rest: AES-256-GCM with a key file made at provisioning.

Names and ID numbers are sealed before they touch the disk, and shown masked
everywhere except in the record sent upstream.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.identity import mask_id_number, mask_name

KEY_BYTES = 32


class KeyError_(Exception):
    """The data key is missing, unreadable, the wrong size or too widely readable."""


def create_key(path: str | os.PathLike, force: bool = False) -> Path:
    """Write a new random key, mode 0600. Refuses to replace an existing key unless forced:
    records sealed with the old key could not be read any more."""
    path = Path(path)
    if path.exists() and not force:
        raise KeyError_(f"{path} exists; refusing to overwrite a data key (records sealed "
                        "with it would become unreadable). Use --force only if you mean it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(KEY_BYTES))
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)
    return path


def load_key(path: str | os.PathLike, what: str = "data key", setting: str = "privacy.key_file",
             error=None) -> bytes:
    """A 32-byte secret key file, readable only by its owner; `error` is raised (KeyError_
    by default) naming the file, the config key that points at it and the fix."""
    error = error or KeyError_
    path = Path(path)
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} {path} not found ({setting}); create it with "
                    "'gate-agent provision init'") from None
    except PermissionError:
        raise error(f"{what} {path} is not readable by this user ({setting})") from None
    if len(key) != KEY_BYTES:
        raise error(f"{what} {path} has {len(key)} bytes; expected {KEY_BYTES} ({setting})")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise error(f"{what} {path} has mode {mode:o}; it must be 0600 (chmod 600 {path})")
    return key


class Sealer:
    """Encrypts and decrypts the personal fields of a record, bound to its UUID."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def seal(self, fields: dict, bound_to: str) -> bytes:
        nonce = os.urandom(12)
        plain = json.dumps(fields, ensure_ascii=False).encode()
        return nonce + self._aead.encrypt(nonce, plain, bound_to.encode())

    def open(self, blob: bytes, bound_to: str) -> dict:
        return json.loads(self._aead.decrypt(blob[:12], blob[12:], bound_to.encode()))


MASKERS = {"id_number": mask_id_number, "name": mask_name, "english_name": mask_name,
           "chinese_name": mask_name}


def masked(data: dict) -> dict:
    """A copy of record data safe for logs and screens."""
    out = {}
    for key, value in data.items():
        if key in MASKERS and isinstance(value, str):
            out[key] = MASKERS[key](value)
        elif key in ("address", "photo", "fingerprint") and value:
            out[key] = "<withheld>"
        elif isinstance(value, dict):
            out[key] = masked(value)
        else:
            out[key] = value
    return out
