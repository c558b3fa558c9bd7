"""gate-agent: the software at the gate of a site: card and plate reads, decisions,
barrier relays, one-key alarms, and store-and-forward to the police-side platform."""

__version__ = "0.1.0"
