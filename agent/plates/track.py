"""One event per vehicle: plates followed across frames, their reads voted into one text.

Each frame's plate observations are matched to live tracks by box overlap
or centroid distance, and by text similarity where both have text. A track
keeps a per-length, per-position vote of characters weighted by each read's
character confidence, and the colour weighted by read confidence.

A track emits exactly one `PlateEvent`:
- early, once the vote is settled (enough reads, every position agreed), so
  the barrier decision does not wait for the vehicle to leave;
- after `max_wait_s` of reads that never agree well enough (a car waiting at a
  closed barrier does not leave: it must get its decision, the rules weigh
  the low confidence); or
- when the vehicle leaves (no observation for `gone_s`), with what it has.

A plate already emitted at this lane within `repeat_window_s` is not
emitted again (a car waiting at the barrier, a track lost and found again).
"""
from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from agent.platecodes import edit_distance, is_valid


@dataclass
class Observation:
    """One plate seen in one frame (a detection and, if read, its reading)."""

    box: tuple[int, int, int, int]
    corners: np.ndarray
    time: float
    text: str = ""
    confidence: float = 0.0
    char_confidences: tuple[float, ...] = ()
    color: str = ""
    scene: np.ndarray | None = field(default=None, repr=False)
    crop: np.ndarray | None = field(default=None, repr=False)


@dataclass
class PlateEvent:
    lane: str
    text: str
    color: str
    confidence: float
    char_confidences: tuple[float, ...]
    reads: int
    """Frames whose reads voted for this text's length."""
    first_seen: float
    last_seen: float
    best: Observation
    """The observation with the most confident read: its scene and crop are the evidence."""
    track_id: int
    reason: str
    """'settled' (vote agreed early), 'waited' (max_wait_s of reads without agreement)
    or 'left' (vehicle gone)."""

    @property
    def valid(self) -> bool:
        return is_valid(self.text, self.color)


@dataclass
class Track:
    id: int
    lane: str
    box: tuple[int, int, int, int]
    first_seen: float
    last_seen: float
    best: Observation | None = None
    votes: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    lengths: Counter = field(default_factory=Counter)
    colors: Counter = field(default_factory=Counter)
    reads_by_length: Counter = field(default_factory=Counter)
    seen: int = 0
    emitted: bool = False

    def add(self, obs: Observation) -> None:
        self.box, self.last_seen = obs.box, obs.time
        self.seen += 1
        if obs.text:
            n = len(obs.text)
            confs = obs.char_confidences if len(obs.char_confidences) == n else (obs.confidence,) * n
            for i, (ch, c) in enumerate(zip(obs.text, confs)):
                self.votes[n][i][ch] += max(float(c), 1e-3)
            self.lengths[n] += max(obs.confidence, 1e-3)
            self.reads_by_length[n] += 1
            if obs.color:
                self.colors[obs.color] += max(obs.confidence, 1e-3)
        if self.best is None or obs.confidence > self.best.confidence or \
                (not self.best.text and obs.text):
            self.best = obs

    def vote(self) -> tuple[str, tuple[float, ...], int]:
        """(voted text, per-position confidence, reads of that length).

        A position's confidence is the winning character's summed confidence
        over the reads of that length: a character read at 0.9 in every frame
        scores 0.9, one that half the frames disagree with scores under 0.5."""
        if not self.lengths:
            return "", (), 0
        n = self.lengths.most_common(1)[0][0]
        reads = self.reads_by_length[n]
        text, confs = [], []
        for i in range(n):
            ch, weight = self.votes[n][i].most_common(1)[0]
            text.append(ch)
            confs.append(min(1.0, weight / reads))
        return "".join(text), tuple(round(c, 3) for c in confs), reads

    @property
    def color(self) -> str:
        return self.colors.most_common(1)[0][0] if self.colors else ""

    def text_now(self) -> str:
        return self.vote()[0]


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _centre_distance(a, b) -> float:
    """Centre distance in units of the wider box's width."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    width = max(a[2] - a[0], b[2] - b[0], 1)
    return float(np.hypot(ca[0] - cb[0], ca[1] - cb[1])) / width


def text_similarity(a: str, b: str) -> float:
    """0..1: 1 - edit distance / longer length (1 when either is unread)."""
    if not a or not b:
        return 1.0
    return 1.0 - edit_distance(a, b) / max(len(a), len(b))


class PlateTracker:
    """Turns per-frame plate observations of one lane into one event per vehicle."""

    def __init__(self, lane: str = "", *, gone_s: float = 1.0, settle_reads: int = 3,
                 settle_agreement: float = 0.8, repeat_window_s: float = 30.0,
                 max_centre_distance: float = 1.5, min_text_similarity: float = 0.5,
                 max_wait_s: float = 2.0):
        self.lane = lane
        self.max_wait_s = max_wait_s
        self.gone_s = gone_s
        self.settle_reads, self.settle_agreement = settle_reads, settle_agreement
        self.repeat_window_s = repeat_window_s
        self.max_centre_distance = max_centre_distance
        self.min_text_similarity = min_text_similarity
        self.tracks: list[Track] = []
        self.recent: dict[str, float] = {}
        """Plate text -> time it was last emitted or seen after emitting (repeat window)."""
        self.suppressed = 0
        self._repeats: list[float] = []
        self._ids = itertools.count(1)

    def update(self, observations: list[Observation], now: float) -> list[PlateEvent]:
        """Feed one frame's observations (possibly none); returns the events now due."""
        unmatched = list(observations)
        for track, obs in self._match(unmatched):
            track.add(obs)
            unmatched.remove(obs)
        for obs in unmatched:
            track = Track(next(self._ids), self.lane, obs.box, obs.time, obs.time)
            track.add(obs)
            self.tracks.append(track)
        events = []
        for track in list(self.tracks):
            if now - track.last_seen > self.gone_s:
                self.tracks.remove(track)
                if not track.emitted:
                    events += self._emit(track, "left", now)
                continue
            text, confs, reads = track.vote()
            if track.emitted:
                if text:
                    self.recent[text] = now  # still there: keep the repeat window open
            elif text and reads >= self.settle_reads:
                if is_valid(text, track.color) and min(confs) >= self.settle_agreement:
                    events += self._emit(track, "settled", now)
                elif now - track.first_seen >= self.max_wait_s:
                    events += self._emit(track, "waited", now)
        return events

    def flush(self, now: float) -> list[PlateEvent]:
        """End of the stream: every live track that has not emitted does so now."""
        events = []
        for track in self.tracks:
            if not track.emitted:
                events += self._emit(track, "left", now)
        self.tracks.clear()
        return events

    def take_repeats(self) -> list[float]:
        """first_seen of each track suppressed as a repeat since the last call: a vehicle
        whose plate was read, though no event says so again."""
        repeats, self._repeats = self._repeats, []
        return repeats

    def _match(self, observations: list[Observation]):
        pairs = []
        for ti, track in enumerate(self.tracks):
            for oi, obs in enumerate(observations):
                iou = _iou(track.box, obs.box)
                dist = _centre_distance(track.box, obs.box)
                if iou < 0.1 and dist > self.max_centre_distance:
                    continue
                similarity = text_similarity(track.text_now(), obs.text)
                if similarity < self.min_text_similarity:
                    continue
                pairs.append((iou + similarity - 0.2 * dist, ti, oi))
        used_t, used_o = set(), set()
        for _, ti, oi in sorted(pairs, reverse=True):
            if ti in used_t or oi in used_o:
                continue
            used_t.add(ti)
            used_o.add(oi)
            yield self.tracks[ti], observations[oi]

    def _emit(self, track: Track, reason: str, now: float) -> list[PlateEvent]:
        track.emitted = True
        text, confs, reads = track.vote()
        if not text:
            return []
        last = self.recent.get(text)
        self.recent[text] = now
        self._forget(now)
        if last is not None and now - last <= self.repeat_window_s:
            self.suppressed += 1
            self._repeats.append(track.first_seen)
            return []
        return [PlateEvent(lane=self.lane, text=text, color=track.color,
                           confidence=round(min(confs), 3), char_confidences=confs, reads=reads,
                           first_seen=track.first_seen, last_seen=track.last_seen, best=track.best,
                           track_id=track.id, reason=reason)]

    def _forget(self, now: float) -> None:
        for text, at in list(self.recent.items()):
            if now - at > self.repeat_window_s:
                del self.recent[text]
