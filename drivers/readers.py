"""The readers area: one subsystem per `[[readers]]` entry, turning reads into records.

A card read becomes a `card_read` record holding only the fields in
`privacy.keep_card_fields` (plus the record's identity and checks: reader,
lane, card_kind, id_number, expired, not_yet_valid, id_valid, problems); the
store seals the personal ones. A badge becomes `badge_read`; a reader that
vanishes, falls silent or reports a SAM or card failure becomes a `fault`
record (once per condition until it recovers, then a `recovered` one).
"""
from __future__ import annotations

import base64
import ctypes
import datetime as dt
import ctypes.util
import logging
import os
from zoneinfo import ZoneInfo

from agent import bus as topics
from agent import idcard
from drivers.serial_reader import BadgePoller, IdCardPoller

log = logging.getLogger("gate.readers")

WLT_LIBRARIES = ("wlt2bmp", "wltrs", "WltRS", "dewlt", "wlt")
WLT_PATHS = ("/usr/lib/libwlt2bmp.so", "/usr/local/lib/libwlt2bmp.so", "/opt/wlt/libwlt2bmp.so")
BMP_BYTES = 38862
"""102 x 126 pixels, 24-bit rows padded to 308 bytes, plus the 54-byte BMP header."""


class WltDecoder:
    """The vendor's WLT photo decoder, if one is installed: `unpack(wlt, bmp, 1) == 1`
    (the libwlt2bmp.so signature). Found at run time through ctypes, never required."""

    def __init__(self, paths=None):
        self.library = None
        self.path = ""
        self.problem = ""
        candidates = list(paths if paths is not None else WLT_PATHS)
        if paths is None:
            candidates += [p for p in (ctypes.util.find_library(n) for n in WLT_LIBRARIES) if p]
        for path in candidates:
            if os.sep in path and not os.path.exists(path):
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError as exc:
                self.problem = f"{path}: {exc}"
                continue
            if not hasattr(lib, "unpack"):
                self.problem = f"{path} has no unpack() entry point; not a known WLT decoder"
                continue
            self.library, self.path = lib, path
            return
        self.problem = self.problem or ("no WLT decoder library found (looked for libwlt2bmp and "
                                        "kin); ID photos are kept as raw WLT bytes, not images")

    @property
    def available(self) -> bool:
        return self.library is not None

    def decode(self, wlt: bytes) -> bytes | None:
        """A BMP image, or None if there is no decoder or it refuses the data."""
        if not self.available or len(wlt) != idcard.PHOTO_LEN:
            return None
        src = ctypes.create_string_buffer(wlt, len(wlt))
        dst = ctypes.create_string_buffer(BMP_BYTES)
        try:
            if self.library.unpack(src, dst, 1) != 1:
                return None
        except Exception as exc:
            log.warning("WLT decoder %s failed: %s", self.path, exc)
            return None
        return dst.raw


_decoder: WltDecoder | None = None


def wlt_decoder() -> WltDecoder:
    global _decoder
    if _decoder is None:
        _decoder = WltDecoder()
        if not _decoder.available:
            log.warning("%s", _decoder.problem)
    return _decoder


def card_record(card: dict, reader: str, lane: str, keep) -> dict:
    """The card_read data: the kept fields only, binary blocks as base64."""
    keep = set(keep) | set(idcard.ALWAYS_KEPT)
    data = {"reader": reader, "lane": lane}
    for key, value in card.items():
        if key in ("photo", "fingerprint") or key not in keep:
            continue
        data[key] = value
    data["problems"] = card.get("problems", [])
    if "photo" in keep and card.get("photo"):
        data["photo"] = base64.b64encode(card["photo"]).decode()
        data["photo_format"] = "wlt"
        bmp = wlt_decoder().decode(card["photo"])
        if bmp is not None:
            data["photo_image"] = base64.b64encode(_jpeg(bmp)).decode()
    if "fingerprint" in keep and card.get("fingerprint"):
        data["fingerprint"] = base64.b64encode(card["fingerprint"]).decode()
    return data


def _jpeg(bmp: bytes) -> bytes:
    import cv2
    import numpy as np
    image = cv2.imdecode(np.frombuffer(bmp, np.uint8), cv2.IMREAD_COLOR)
    ok, jpeg = cv2.imencode(".jpg", image) if image is not None else (False, None)
    return jpeg.tobytes() if ok else bmp


class _ReaderSubsystem:
    def __init__(self, gate, cfg, poller):
        self.gate, self.cfg, self.poller = gate, cfg, poller
        self.name = f"reader.{cfg.name}"
        self.not_stored = 0
        self._store_problem = ""
        self._guard_asked = topics.Throttle(topics.GUARD_ATTENTION_EVERY_S)

    def start(self) -> None:
        self.poller.start()

    def stop(self) -> None:
        self.poller.stop()

    def health(self) -> dict:
        health = self.poller.health()
        health.update(port=self.cfg.port, kind=self.cfg.kind, reads=self.poller.reads)
        if self._store_problem and health.get("state") == "ok":
            health.update(state="degraded", detail=f"reads not stored ({self.not_stored} tries): "
                                                   f"{self._store_problem}; the guard is asked to check by hand")
        return health

    def _store_read(self, kind: str, data: dict):
        """The read stored: the decision follows from the store. When the store refuses it the
        guard is asked to check by hand (at most every topics.GUARD_ATTENTION_EVERY_S while it goes on) and
        the error goes back to the poller, which reads a card still on the reader again."""
        try:
            record = self.gate.record(kind, data)
        except Exception as exc:
            self.not_stored += 1
            self._store_problem = str(exc)
            if self._guard_asked.allow():
                self._ask_guard(kind, exc)
            raise
        self._store_problem = ""
        self._guard_asked.reset()
        return record

    def _ask_guard(self, kind: str, exc: Exception) -> None:
        lanes = self.gate.config.lanes
        lane = self.cfg.lane or (lanes[0].name if len(lanes) == 1 else "")
        log.error("reader %s: %s NOT STORED (%s): no decision; the guard of lane %s is asked to "
                  "check by hand", self.cfg.name, kind, exc, lane or "?")
        if lane:
            self.gate.bus.publish(topics.GUARD_ATTENTION, lane=lane, reason="fault", ref=None)

    def _fault(self, condition: str, detail: str) -> None:
        self.gate.record("fault", {"subsystem": self.name, "condition": condition, "detail": detail,
                                   "reader": self.cfg.name, "port": self.cfg.port})


class CardReader(_ReaderSubsystem):
    """An ID card reader at a lane (gate subsystem)."""

    def __init__(self, gate, cfg):
        keep = list(gate.config.privacy.keep_card_fields)
        zone = ZoneInfo(gate.config.device.timezone)
        poller = IdCardPoller(cfg.port, baud=cfg.baud, poll_s=cfg.poll_s, name=cfg.name,
                              fingerprint="fingerprint" in keep, when_card=self._card,
                              when_fault=self._fault,
                              today=lambda: dt.datetime.now(zone).date())
        super().__init__(gate, cfg, poller)
        self.keep = keep
        if "photo" in keep:
            wlt_decoder()

    def _card(self, card: dict) -> None:
        data = card_record(card, self.cfg.name, self.cfg.lane, self.keep)
        record = self._store_read("card_read", data)
        flags = [f for f in ("expired", "not_yet_valid") if card.get(f)]
        if not card.get("id_valid"):
            flags.append("id check failed")
        log.info("reader %s: %s card read%s (record %s)", self.cfg.name, card["card_kind"],
                 f" [{', '.join(flags)}]" if flags else "", record.uuid)


class BadgeReader(_ReaderSubsystem):
    """A badge reader (RDM6300, Wiegand converter, digit lines) at a lane (gate subsystem)."""

    def __init__(self, gate, cfg):
        poller = BadgePoller(cfg.port, cfg.kind, baud=cfg.baud, name=cfg.name,
                             when_badge=self._badge, when_fault=self._fault)
        super().__init__(gate, cfg, poller)

    def _badge(self, badge) -> None:
        data = {"reader": self.cfg.name, "lane": self.cfg.lane, **badge.to_data()}
        self._store_read("badge_read", data)


def build(gate) -> list:
    """One subsystem per configured reader."""
    subsystems = []
    for cfg in gate.config.readers:
        cls = CardReader if cfg.kind == "idcard" else BadgeReader
        subsystems.append(cls(gate, cfg))
    return subsystems
