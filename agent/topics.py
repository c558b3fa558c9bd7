"""The MQTT topic scheme: `<prefix>/<site>/<device>/...`, one place that spells it.

docs/topics.md documents every topic with its payload. Uplink (device -> platform):
records per kind, images, availability, the retained status. Downlink (platform ->
device): retained config and lists, commands; the device answers on the reply topic.
"""
from __future__ import annotations

from dataclasses import dataclass

from agent.records import KINDS


@dataclass(frozen=True)
class Topics:
    prefix: str
    site: str
    device: str

    @classmethod
    def from_config(cls, config) -> "Topics":
        return cls(config.mqtt.topic_prefix, config.device.site, config.device.id)

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.device}"

    def record(self, kind: str) -> str:
        """Where a record of `kind` goes (QoS 1, not retained); health is a record kind too."""
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}")
        return f"{self.base}/records/{kind}"

    def image(self, sha256: str) -> str:
        """One image, raw JPEG bytes; its sha256 is the last level (the receiver checks it)."""
        return f"{self.base}/images/{sha256}"

    @property
    def availability(self) -> str:
        """Retained `online` / `offline`; `offline` is also the last will."""
        return f"{self.base}/availability"

    @property
    def status(self) -> str:
        """Retained JSON: versions the device runs, disk and outbox condition, sent directly."""
        return f"{self.base}/status"

    @property
    def config(self) -> str:
        """Downlink, retained, signed: runtime settings with a version."""
        return f"{self.base}/config"

    @property
    def lists(self) -> str:
        """Downlink, retained, signed: allow/deny lists with a version."""
        return f"{self.base}/lists"

    @property
    def commands(self) -> str:
        """Downlink, QoS 1, signed, with expiry and nonce."""
        return f"{self.base}/commands"

    @property
    def command_reply(self) -> str:
        return f"{self.base}/commands/reply"

    @property
    def records_filter(self) -> str:
        """Subscription filter a platform uses for every record of this device."""
        return f"{self.base}/records/#"

    def kind_of(self, topic: str) -> str | None:
        """The record kind of a record topic, or None."""
        head = f"{self.base}/records/"
        if topic.startswith(head) and topic[len(head):] in KINDS:
            return topic[len(head):]
        return None
