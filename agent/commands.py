"""Signed commands from the platform: authenticated beyond the broker.

A command is a JSON object signed with the platform's Ed25519 key:

    {"command": "open_barrier", "args": {"lane": "in1"}, "device_id": "2101...",
     "nonce": "3f1c...", "expires": 1795000000.0, "signature": "<base64>"}

The signature covers the canonical JSON (sorted keys, no spaces, UTF-8) of the
object without "signature". A command runs at most once: its nonce is stored
in the SQLite state before it executes, so a replay (or the broker redelivering
it after a reconnect) is refused. Every command, refused or not, becomes a
"command" record and gets an answer on the reply topic.

Config and list documents downlink are signed the same way (`sign_document`),
without expiry: their version number orders them instead.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent import bus as busmod

log = logging.getLogger("gate.commands")

COMMANDS = ("open_barrier", "drill_start", "drill_end", "resync")
DEFAULT_TTL_S = 60.0
MAX_TTL_S = 86400.0
"""Commands valid for longer than this are refused: the nonce store stays small."""
NONCES_KEY = "command_nonces"


class Refused(Exception):
    """A downlink message that is not acted on; str() is the reason sent back."""


def canonical(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_document(private_key: Ed25519PrivateKey, doc: dict) -> bytes:
    """The message payload for `doc`, signed (for config and list documents)."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    signature = base64.b64encode(private_key.sign(canonical(body))).decode()
    return canonical(dict(body, signature=signature))


def sign_command(private_key: Ed25519PrivateKey, command: dict, ttl_s: float = DEFAULT_TTL_S) -> bytes:
    """A signed command payload; adds a random `nonce` and `expires` (now + ttl_s) if absent."""
    doc = dict(command)
    doc.setdefault("nonce", os.urandom(16).hex())
    doc.setdefault("expires", round(time.time() + ttl_s, 3))
    doc.setdefault("args", {})
    return sign_document(private_key, doc)


def load_public_key(path: str | os.PathLike) -> Ed25519PublicKey:
    """A PEM public key, or the raw 32 bytes. Raises Refused naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise Refused(f"command key {path} (mqtt.command_key_file) unreadable: {exc.strerror}") from None
    try:
        if len(data) == 32:
            return Ed25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise Refused(f"command key {path} (mqtt.command_key_file) is not an Ed25519 public key: {exc}") \
            from None
    if not isinstance(key, Ed25519PublicKey):
        raise Refused(f"command key {path} (mqtt.command_key_file) is not an Ed25519 public key")
    return key


def public_pem(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


def verify(public_key: Ed25519PublicKey | None, payload: bytes) -> dict:
    """The signed document without its signature; raises Refused(reason)."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Refused("malformed: not JSON") from None
    if not isinstance(doc, dict):
        raise Refused("malformed: not a JSON object")
    signature = doc.pop("signature", None)
    if not signature:
        raise Refused("unsigned")
    if public_key is None:
        raise Refused("no command key configured (mqtt.command_key_file): signed messages can't be checked")
    try:
        public_key.verify(base64.b64decode(signature, validate=True), canonical(doc))
    except (InvalidSignature, ValueError, TypeError):
        raise Refused("bad signature") from None
    return doc


class CommandHandler:
    """Checks, records, executes and answers one command payload at a time."""

    def __init__(self, store, bus, *, device_id: str, public_key: Ed25519PublicKey | None,
                 lanes: tuple[str, ...] = (), resend_since=None):
        self.store, self.bus = store, bus
        self.device_id = device_id
        self.public_key = public_key
        self.lanes = lanes
        self.resend_since = resend_since
        self._lock = threading.Lock()

    def handle(self, payload: bytes, now: float | None = None) -> dict:
        """Handle one command; returns the reply (also stored as a "command" record)."""
        now = time.time() if now is None else now
        doc: dict = {}
        with self._lock:
            try:
                doc = verify(self.public_key, payload)
                self._check(doc, now)
                self._remember_nonce(doc, now)
            except Refused as exc:
                return self._refuse(doc, str(exc))
            record = self.store.add("command", self._data(doc, True, "ok"))
            detail = self._execute(doc, record.uuid)
        log.info("command %s accepted (nonce %s)%s", doc["command"], doc["nonce"],
                 f": {detail}" if detail else "")
        return {"command": doc["command"], "nonce": doc["nonce"], "accepted": True, "reason": "ok",
                "detail": detail, "record": record.uuid}

    def _check(self, doc: dict, now: float) -> None:
        for key in ("command", "nonce", "expires"):
            if key not in doc:
                raise Refused(f"malformed: lacks {key!r}")
        if not isinstance(doc["expires"], (int, float)) or isinstance(doc["expires"], bool):
            raise Refused("malformed: expires must be epoch seconds")
        if doc["expires"] <= now:
            raise Refused(f"expired {now - doc['expires']:.0f} s ago")
        if doc["expires"] > now + MAX_TTL_S:
            raise Refused(f"expires too far ahead (more than {MAX_TTL_S:.0f} s)")
        if doc.get("device_id") != self.device_id:
            raise Refused(f"for device {doc.get('device_id')!r}, not this one")
        if doc["command"] not in COMMANDS:
            raise Refused(f"unknown command {doc['command']!r}; known: {', '.join(COMMANDS)}")
        args = doc.get("args", {})
        if not isinstance(args, dict):
            raise Refused("malformed: args must be an object")
        if doc["command"] == "open_barrier" and args.get("lane") not in self.lanes:
            raise Refused(f"unknown lane {args.get('lane')!r}; lanes: {', '.join(self.lanes)}")
        nonces = self.store.state_get(NONCES_KEY, {})
        if doc["nonce"] in nonces:
            raise Refused("replayed: nonce already used")

    def _remember_nonce(self, doc: dict, now: float) -> None:
        """Persist the nonce before acting: a crash after this point loses the command
        rather than running it twice (an open barrier must never repeat by accident)."""
        nonces = {n: exp for n, exp in self.store.state_get(NONCES_KEY, {}).items() if exp > now}
        nonces[doc["nonce"]] = doc["expires"]
        self.store.state_set(NONCES_KEY, nonces)

    def _execute(self, doc: dict, ref: str) -> str:
        command, args = doc["command"], doc.get("args", {})
        if command == "open_barrier":
            n = self.bus.publish(busmod.BARRIER_OPEN, lane=args["lane"], cause="command", ref=ref)
            return "" if n else "no barrier handler is running"
        if command in ("drill_start", "drill_end"):
            on = command == "drill_start"
            until = args.get("until") if on else None
            if on and until is None and args.get("minutes"):
                until = time.time() + float(args["minutes"]) * 60
            n = self.bus.publish(busmod.DRILL, on=on, source="command", until=until)
            return "" if n else "no drill handler is running"
        if command == "resync":
            since = float(args.get("since", time.time() - 86400))
            count = self.resend_since(since) if self.resend_since else 0
            self.bus.publish(busmod.RESYNC)
            return f"{count} record(s) queued again"
        raise AssertionError(command)

    def _refuse(self, doc: dict, reason: str) -> dict:
        log.warning("command %s refused: %s", doc.get("command", "?"), reason)
        record = self.store.add("command", self._data(doc, False, reason))
        return {"command": doc.get("command"), "nonce": doc.get("nonce"), "accepted": False,
                "reason": reason, "record": record.uuid}

    @staticmethod
    def _data(doc: dict, accepted: bool, reason: str) -> dict:
        command = doc.get("command")
        return {"command": command if isinstance(command, str) else None, "accepted": accepted,
                "reason": reason, "nonce": doc.get("nonce"), "args": doc.get("args", {}),
                "expires": doc.get("expires")}
