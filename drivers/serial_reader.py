"""ID card and badge readers on serial ports (pyserial): polling, dedupe, unplug and replug.

`IdCardLink` speaks the SAM protocol over an open port (request, checked reply,
retries). `IdCardPoller` and `BadgePoller` each run one reader in a thread:
they open the port (auto-detecting the speed where asked), poll or listen,
report each new card or badge once, and when the port vanishes or falls
silent they report a fault, close it and retry with capped backoff until the
reader is back. Callbacks run in the poller's thread (gpiozero style):
`when_card(dict)`, `when_badge(Badge)`, `when_fault(condition, detail)`.
"""
from __future__ import annotations

import datetime as dt
import logging
import termios
import threading
import time

import serial

from agent import badges as badgefmt
from agent import idcard

log = logging.getLogger("gate.readers")

READ_COMMANDS = (idcard.READ_TEXT_PHOTO, idcard.READ_TEXT_PHOTO_FINGERPRINT)
LARGEST_REPLY = 2400
PORT_ERRORS = (serial.SerialException, OSError, termios.error)
"""What a vanished port raises: pyserial's errors, EIO, and termios.error from a hung-up tty."""
CARD_FAILURES = {0x31, 0x32, 0x33, 0x40, 0x41, 0x47, 0x81, 0x24}
"""Statuses that concern the card on the reader (badly placed, damaged, fake), not the reader."""


class ReaderError(Exception):
    condition = "reader_error"


class LinkLost(ReaderError):
    """The port vanished or failed (unplugged USB reader, I/O error)."""
    condition = "disconnected"


class NoReply(ReaderError):
    """No valid reply in time (silence, or only garbage)."""
    condition = "silent"


class PortMissing(ReaderError):
    condition = "port_missing"


def open_port(port: str, baud: int, timeout: float = 0.05) -> serial.SerialBase:
    """Open a serial port or pyserial URL; PortMissing / LinkLost with the reason in words."""
    kwargs = {"exclusive": True} if "://" not in port else {}
    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=timeout, write_timeout=1.0,
                                     **kwargs)
    except serial.SerialException as exc:
        text = str(exc)
        if "No such file" in text or "could not open port" in text and "[Errno 2]" in text:
            raise PortMissing(f"{port}: no such port (unplugged? see 'gate-agent reader list')") from None
        if "Permission denied" in text or "[Errno 13]" in text:
            raise LinkLost(f"{port}: permission denied (add the user to the dialout group)") from None
        if "busy" in text.lower() or "lock" in text.lower():
            raise LinkLost(f"{port}: in use by another program") from None
        raise LinkLost(f"{port}: {text}") from None
    except (OSError, ValueError) as exc:
        raise LinkLost(f"{port}: {exc}") from None


class IdCardLink:
    """Request/reply with one ID card reader on an open port.

    Each exchange starts clean (stale bytes are dropped: the protocol is strictly
    request then reply), retries on silence, garbage or a reader-side checksum
    error, and returns the reply frame for the caller to judge its status.
    """

    def __init__(self, port: serial.SerialBase, timeout_s: float = 0.5, retries: int = 2):
        self.port = port
        self.timeout_s = timeout_s
        self.retries = retries
        self.parser = idcard.FrameParser()
        self.exchanges = 0

    @property
    def baud(self) -> int:
        return self.port.baudrate

    def transact(self, command: tuple[int, int], data: bytes = b"",
                 timeout_s: float | None = None) -> idcard.Frame:
        timeout = timeout_s or self.timeout_s
        if command in READ_COMMANDS:
            timeout += LARGEST_REPLY * 10 / max(self.baud, 1200)
        request = idcard.build_request(*command, data)
        problem = "no reply"
        for _ in range(self.retries + 1):
            self._send(request)
            frame = self._await(timeout)
            self.exchanges += 1
            if frame is None:
                problem = ("only garbled bytes" if self.parser.rejected else "no reply")
                continue
            if frame.sw3 in (0x10, 0x11):
                problem = f"reader saw a broken request ({frame.status})"
                continue
            return frame
        raise NoReply(f"{problem} to command {command[0]:02X} {command[1]:02X} "
                      f"after {self.retries + 1} tries")

    def _send(self, request: bytes) -> None:
        self.parser.reset()
        self.parser.rejected = 0
        try:
            self.port.reset_input_buffer()
            self.port.write(request)
        except PORT_ERRORS as exc:
            raise LinkLost(f"writing to {self.port.port}: {exc}") from None

    def _await(self, timeout: float) -> idcard.Frame | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.port.read(max(1, self.port.in_waiting))
            except PORT_ERRORS as exc:
                raise LinkLost(f"reading {self.port.port}: {exc}") from None
            if chunk:
                frames = self.parser.feed(chunk)
                if frames:
                    return frames[0]
        frames = self.parser.flush()
        return frames[0] if frames else None

    def _expect(self, frame: idcard.Frame, step: str, *ok: int) -> idcard.Frame:
        if frame.sw3 not in ok:
            raise idcard.StatusError(frame.sw3, step)
        return frame

    # the commands
    def sam_status(self) -> int:
        return self.transact(idcard.SAM_STATUS).sw3

    def sam_id(self) -> str:
        frame = self._expect(self.transact(idcard.READ_SAM_ID), "read SAM id", 0x90)
        return frame.data.hex().upper()

    def reset_sam(self) -> None:
        self._expect(self.transact(idcard.RESET_SAM), "reset SAM", 0x90)

    def find(self) -> bool:
        """True if a card is in the field, False if none."""
        frame = self._expect(self.transact(idcard.FIND_CARD), "find card", 0x9F, 0x80)
        return frame.sw3 == 0x9F

    def select(self) -> bool:
        frame = self._expect(self.transact(idcard.SELECT_CARD), "select card", 0x90, 0x81)
        return frame.sw3 == 0x90

    def read(self, fingerprint: bool = False) -> idcard.CardData:
        command = idcard.READ_TEXT_PHOTO_FINGERPRINT if fingerprint else idcard.READ_TEXT_PHOTO
        frame = self._expect(self.transact(command), "read card", 0x90)
        try:
            return idcard.parse_read_data(frame.data, with_fingerprint=fingerprint)
        except ValueError as exc:
            raise idcard.StatusError(0x41, "read card", str(exc)) from None

    def read_new_address(self) -> str:
        frame = self._expect(self.transact(idcard.READ_NEW_ADDRESS), "read new address", 0x90)
        return frame.data.decode("utf-16-le", errors="replace").strip(" \0")

    def set_baud(self, baud: int) -> None:
        """Switch the reader's speed (command 60 nn), then this port's."""
        nn = idcard.BAUDS.index(baud)
        self._expect(self.transact((idcard.SET_BAUD, nn)), "set speed", 0x90)
        self.port.baudrate = baud


def detect_baud(port: serial.SerialBase, bauds=idcard.BAUDS, timeout_s: float = 0.3) -> int | None:
    """Try each speed with a SAM status request; the first that gets a valid frame wins."""
    for baud in bauds:
        port.baudrate = baud
        link = IdCardLink(port, timeout_s=timeout_s, retries=0)
        try:
            link.sam_status()
            return baud
        except NoReply:
            continue
    return None


def connect_idcard(port: str, baud: int = 0, timeout_s: float = 0.5) -> IdCardLink:
    """Open an ID card reader; baud 0 auto-detects. NoReply if no speed gets an answer."""
    ser = open_port(port, baud or idcard.BAUDS[0])
    if baud == 0:
        try:
            found = detect_baud(ser)
        except ReaderError:
            ser.close()
            raise
        if found is None:
            ser.close()
            raise NoReply(f"{port}: no answer at {', '.join(map(str, idcard.BAUDS))} baud "
                          "(is it an ID card reader? is it powered?)")
        log.info("ID card reader on %s answers at %d baud", port, found)
    return IdCardLink(ser, timeout_s=timeout_s)


def card_from(data: idcard.CardData, today: dt.date | None = None) -> dict:
    """The named fields of a read, with the raw photo and fingerprint bytes."""
    card = idcard.parse_text(data.text, today)
    card["photo"] = data.photo
    if data.fingerprint:
        card["fingerprint"] = data.fingerprint
    return card


def read_one(link: IdCardLink, wait_s: float = 10.0, poll_s: float = 0.2,
             fingerprint: bool = False, today: dt.date | None = None) -> dict | None:
    """Wait up to `wait_s` for a card and read it; None if none came."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if link.find() and link.select():
            return card_from(link.read(fingerprint), today)
        time.sleep(poll_s)
    return None


# --- the pollers ----------------------------------------------------------------------

class _PortLoop:
    """A thread that keeps one reader's port open: connect, work, and on loss
    report once, close, and retry with capped exponential backoff."""

    kind = "reader"

    def __init__(self, port: str, *, name: str = "", when_fault=None, backoff_s=(0.5, 10.0)):
        self.port_name = port
        self.name = name or port
        self.when_fault = when_fault
        self.backoff_start, self.backoff_max = backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = {"state": "stopped", "detail": ""}
        self._active_faults: set[str] = set()
        self._fault_times: dict[str, float] = {}
        self.connects = 0

    # lifecycle
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._state = {"state": "starting", "detail": f"opening {self.port_name}"}
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}:{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._thread = None
        self._close()
        self._state = {"state": "stopped", "detail": ""}

    def health(self) -> dict:
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return {"state": "fault", "detail": self._state.get("detail", "reader thread died")}
        return dict(self._state)

    @property
    def is_connected(self) -> bool:
        return self._state["state"] == "ok"

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._connect()
            except ReaderError as exc:
                failures += 1
                delay = min(self.backoff_max, self.backoff_start * 2 ** (failures - 1))
                self._degraded(exc.condition, f"{exc}; retrying in {delay:.1f} s")
                self._stop.wait(delay)
                continue
            except Exception as exc:
                self._state = {"state": "fault", "detail": f"cannot open {self.port_name}: {exc!r}"}
                log.exception("reader %s: connect failed", self.name)
                raise
            failures = 0
            self.connects += 1
            self._recovered()
            try:
                self._work()
            except ReaderError as exc:
                self._close()
                self._degraded(exc.condition, f"{exc}; reopening")
                self._stop.wait(self.backoff_start)
            except Exception as exc:
                self._close()
                self._state = {"state": "fault", "detail": f"{type(exc).__name__}: {exc}"}
                log.exception("reader %s failed", self.name)
                raise
        self._close()

    def _degraded(self, condition: str, detail: str) -> None:
        self._state = {"state": "degraded", "detail": f"{condition}: {detail}"}
        if condition not in self._active_faults:
            self._active_faults.add(condition)
            log.warning("reader %s: %s: %s", self.name, condition, detail)
            self._fault(condition, detail)

    def _recovered(self) -> None:
        self._state = {"state": "ok", "detail": f"{self.port_name} open"}
        if self._active_faults:
            gone = ", ".join(sorted(self._active_faults))
            self._active_faults.clear()
            log.info("reader %s back after %s", self.name, gone)
            self._fault("recovered", f"{self.port_name} answering again after: {gone}")

    def _fault(self, condition: str, detail: str, every_s: float = 0.0) -> None:
        """Report a fault; with `every_s`, at most once per that many seconds per condition."""
        now = time.monotonic()
        if every_s and now - self._fault_times.get(condition, -every_s) < every_s:
            return
        self._fault_times[condition] = now
        if self.when_fault:
            try:
                self.when_fault(condition, detail)
            except Exception:
                log.exception("reader %s: fault handler failed", self.name)

    def _connect(self) -> None:
        raise NotImplementedError

    def _work(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError


class IdCardPoller(_PortLoop):
    """Polls one ID card reader: find, select, read; each card reported once while it
    stays on the reader. It counts as gone after `removal_polls` empty finds in a row
    and `removal_s` since it was last read: some readers answer "no card" for a few
    polls after a read although the card never moved."""

    kind = "idcard"

    def __init__(self, port: str, *, baud: int = 0, poll_s: float = 0.3, timeout_s: float = 0.5,
                 fingerprint: bool = False, name: str = "", when_card=None, when_fault=None,
                 removal_polls: int = 2, removal_s: float = 1.0, silent_after: int = 3,
                 backoff_s=(0.5, 10.0), today=None):
        super().__init__(port, name=name, when_fault=when_fault, backoff_s=backoff_s)
        self.baud, self.poll_s, self.timeout_s = baud, poll_s, timeout_s
        self.want_fingerprint = fingerprint
        self.fingerprint_supported: bool | None = None
        self.when_card = when_card
        self.removal_polls, self.removal_s = removal_polls, removal_s
        self.silent_after = silent_after
        self.today = today
        self.link: IdCardLink | None = None
        self.detected_baud: int | None = None
        self.present: str | None = None
        self._present_seen = 0.0
        self._empty_polls = 0
        self.reads = 0

    def _connect(self) -> None:
        self.link = connect_idcard(self.port_name, self.baud, self.timeout_s)
        self.detected_baud = self.link.baud

    def _close(self) -> None:
        if self.link is not None:
            try:
                self.link.port.close()
            except Exception:
                pass
            self.link = None

    def _work(self) -> None:
        silent = 0
        while not self._stop.is_set():
            try:
                self.poll_once()
                silent = 0
                if self._state["state"] != "ok":
                    self._recovered()
            except NoReply as exc:
                silent += 1
                if silent >= self.silent_after:
                    raise NoReply(f"{self.port_name}: {exc}") from None
            except idcard.StatusError as exc:
                self._status_problem(exc)
            self._stop.wait(self.poll_s)

    def poll_once(self) -> dict | None:
        """One find / select / read round; returns the card if it is a new one."""
        link = self.link
        if not link.find():
            self._empty_polls += 1
            if (self._empty_polls >= self.removal_polls
                    and time.monotonic() - self._present_seen >= self.removal_s):
                self.present = None
            return None
        self._empty_polls = 0
        if not link.select():
            return None
        data = self._read(link)
        try:
            card = card_from(data, self._today())
        except ValueError as exc:
            self._fault("unreadable_card", f"{self.port_name}: {exc}", every_s=60)
            return None
        if card["id_number"] == self.present:
            self._present_seen = time.monotonic()
            return None
        if self.when_card:
            try:
                self.when_card(card)
            except Exception:
                log.exception("reader %s: handling a card read failed; it will be read again",
                              self.name)
                return None
        self.present = card["id_number"]
        self._present_seen = time.monotonic()
        self.reads += 1
        return card

    def _read(self, link: IdCardLink) -> idcard.CardData:
        if self.want_fingerprint and self.fingerprint_supported is not False:
            try:
                data = link.read(fingerprint=True)
                self.fingerprint_supported = True
                return data
            except idcard.StatusError as exc:
                if exc.sw3 != 0x21:
                    raise
                self.fingerprint_supported = False
                log.warning("reader %s does not support 30 10 (text+photo+fingerprint); "
                            "reading without fingerprints", self.name)
                if not link.select():
                    raise idcard.StatusError(0x81, "select card") from None
        return link.read()

    def _today(self) -> dt.date:
        return self.today() if callable(self.today) else (self.today or dt.date.today())

    def _status_problem(self, exc: idcard.StatusError) -> None:
        if exc.sw3 in idcard.SAM_FAULTS:
            self._degraded(exc.condition, f"{exc}; the reader's SAM needs service")
        elif exc.sw3 in CARD_FAILURES:
            log.info("reader %s: %s", self.name, exc)
            self._fault(exc.condition, f"{exc}{': ' + exc.detail if exc.detail else ''} "
                        "(card badly placed, damaged or not genuine)", every_s=60)
        else:
            self._fault(exc.condition, str(exc), every_s=60)


class BadgePoller(_PortLoop):
    """Listens to one badge reader. A badge seen again within `hold_s` of the last sight
    is the same presentation (RDM6300 repeats its frame while the tag is in the field)."""

    kind = "badge"

    def __init__(self, port: str, fmt: str, *, baud: int = 0, hold_s: float = 1.0, name: str = "",
                 when_badge=None, when_fault=None, backoff_s=(0.5, 10.0)):
        super().__init__(port, name=name, when_fault=when_fault, backoff_s=backoff_s)
        self.format = fmt
        self.baud = baud or badgefmt.RDM6300_BAUD
        self.hold_s = hold_s
        self.when_badge = when_badge
        self.parser = badgefmt.parser_for(fmt)
        self.serial = None
        self._last: tuple[str, float] | None = None
        self.reads = 0

    def _connect(self) -> None:
        self.serial = open_port(self.port_name, self.baud, timeout=0.1)
        self.parser = badgefmt.parser_for(self.format)

    def _close(self) -> None:
        if self.serial is not None:
            try:
                self.serial.close()
            except Exception:
                pass
            self.serial = None

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                chunk = self.serial.read(max(1, self.serial.in_waiting))
            except PORT_ERRORS as exc:
                raise LinkLost(f"reading {self.port_name}: {exc}") from None
            rejected = self.parser.rejected
            for badge in self.parser.feed(chunk):
                self._seen(badge)
            if self.parser.rejected > rejected:
                self._fault("garbled_frame", f"{self.port_name}: {self.parser.last_rejection}",
                            every_s=60)

    def _seen(self, badge: badgefmt.Badge) -> None:
        now = time.monotonic()
        last = self._last
        self._last = (badge.badge, now)
        if last and last[0] == badge.badge and now - last[1] < self.hold_s:
            return
        self.reads += 1
        if self.when_badge:
            try:
                self.when_badge(badge)
            except Exception:
                log.exception("reader %s: handling a badge read failed", self.name)
