"""Provisioning: the installer's tools (config, keys, certificate, selftest, systemd service)."""
