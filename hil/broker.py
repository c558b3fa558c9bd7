"""A real mosquitto on 127.0.0.1 for tests, benches, the demo and the rig."""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


class BrokerUnavailable(RuntimeError):
    pass


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if Path(p).exists()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """`with Mosquitto() as broker:` a broker on 127.0.0.1:broker.port, stopped on exit.

    `stop()` and `start()` again keep the same port, to play a broker outage.
    `extra_config` lines are appended to mosquitto.conf (TLS listeners: see `tls_listener`).
    `acl` is the text of an ACL file (change it live with `set_acl`); `persistent` keeps
    sessions and queued messages across `stop()` / `start()` (a broker restart).
    """

    def __init__(self, port: int | None = None, extra_config: str = "", listener: bool = True,
                 acl: str | None = None, persistent: bool = False):
        self.binary = find_mosquitto()
        if not self.binary:
            raise BrokerUnavailable("mosquitto is not installed (apt-get install mosquitto)")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gate-mosquitto-"))
        self.extra_config = extra_config
        self.listener = listener
        self.acl = acl
        self.persistent = persistent
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        conf = self.dir / "mosquitto.conf"
        persistence = ["persistence true", f"persistence_location {self.dir}/",
                       "max_queued_messages 0"] if self.persistent else ["persistence false"]
        lines = persistence + ["log_dest stderr", "log_type error", "log_type warning",
                               "allow_anonymous true"]
        if os.geteuid() == 0:
            lines.append("user root")   # else it drops to 'mosquitto' and can't read our key files
        if self.listener:
            lines += [f"listener {self.port} 127.0.0.1"]
        if self.acl is not None:
            (self.dir / "acl").write_text(self.acl)
            lines.append(f"acl_file {self.dir / 'acl'}")
        conf.write_text("\n".join(lines) + "\n" + self.extra_config + "\n")
        return conf

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        conf = self._write_config()
        self.log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerUnavailable(f"mosquitto exited with {self.proc.returncode}: "
                                        f"{(self.dir / 'mosquitto.log').read_text()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def set_acl(self, acl: str) -> None:
        """Rewrite the ACL file and make the running broker reload it (SIGHUP)."""
        self.acl = acl
        (self.dir / "acl").write_text(acl)
        if self.running:
            self.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: a broker crash (no clean disconnects, no will from a clean stop)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "Mosquitto":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- TLS for tests and the rig: a throwaway PKI made with cryptography ------------------

class PKI:
    """A CA, a broker certificate for 127.0.0.1/localhost and a device certificate,
    written as PEM files under `folder`. `PKI(folder, name="rogue")` gives an unrelated
    CA whose certificates the first one's broker won't accept."""

    def __init__(self, folder, name: str = "test", hostname: str = "localhost"):
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self._x509, self._ec, self._oid = x509, ec, NameOID
        self.dir = Path(folder)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = self._cert(f"{name} CA", self.ca_key.public_key(), self.ca_key, ca=True)
        self.ca_file = self._write(f"{name}-ca.pem", self._pem_cert(self.ca_cert))
        self.server_cert_file, self.server_key_file = self.issue(
            "broker", sans=[x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.client_cert_file, self.client_key_file = self.issue("device", client=True)

    def issue(self, common_name: str, sans=None, client: bool = False) -> tuple[Path, Path]:
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        cert = self._cert(common_name, key.public_key(), self.ca_key, sans=sans, client=client)
        from cryptography.hazmat.primitives import serialization
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return (self._write(f"{self.name}-{common_name}.pem", self._pem_cert(cert)),
                self._write(f"{self.name}-{common_name}.key", key_pem))

    def _cert(self, cn, public_key, signer, ca=False, sans=None, client=False):
        x509, oid = self._x509, self._oid
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID
        now = datetime.datetime.now(datetime.timezone.utc)
        issuer = x509.Name([x509.NameAttribute(oid.COMMON_NAME, f"{self.name} CA")])
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(oid.COMMON_NAME, cn)]))
                   .issuer_name(issuer).public_key(public_key)
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                                            critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.ca_key.public_key()), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer, hashes.SHA256())

    @staticmethod
    def _pem_cert(cert) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return cert.public_bytes(serialization.Encoding.PEM)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path


def tls_listener(port: int, pki: PKI, require_certificate: bool = True) -> str:
    """mosquitto.conf lines for a TLS listener on 127.0.0.1:port (for `extra_config`).
    With require_certificate, a client needs a certificate signed by pki's CA."""
    lines = [f"listener {port} 127.0.0.1", f"cafile {pki.ca_file}",
             f"certfile {pki.server_cert_file}", f"keyfile {pki.server_key_file}",
             f"require_certificate {'true' if require_certificate else 'false'}"]
    if require_certificate:
        lines.append("use_identity_as_username true")
    return "\n".join(lines) + "\n"


class Subscriber:
    """A platform-side listener: `with Subscriber(port, "gate/#") as sub:` collects every
    message (topic, payload, user properties) in arrival order.

    `session` names a persistent MQTT v5 session (clean_start False), so that messages
    published while it is away are queued for it by a broker with persistence on.
    """

    def __init__(self, port: int, topic: str = "#", session: str | None = None, host: str = "127.0.0.1"):
        import threading
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        self.messages: list[tuple[str, bytes, dict]] = []
        self.host, self.port, self.topic, self.session = host, port, topic, session
        self.changed = threading.Condition()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=session or "",
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self._props = Properties(PacketTypes.CONNECT)
        if session:
            self._props.SessionExpiryInterval = 3600
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, message):
        props = dict(getattr(message.properties, "UserProperty", []) or [])
        with self.changed:
            self.messages.append((message.topic, message.payload, props))
            self.changed.notify_all()

    def start(self) -> "Subscriber":
        self.client.connect(self.host, self.port, clean_start=self.session is None,
                            properties=self._props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise BrokerUnavailable(f"subscriber could not subscribe on 127.0.0.1:{self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        """Wait until predicate(messages) is true; returns whether it became true."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.1))
        return True

    def records(self) -> list[dict]:
        """Every JSON record received, in arrival order (duplicates kept)."""
        import json
        return [json.loads(p) for t, p, _ in self.messages if "/records/" in t]

    def __enter__(self) -> "Subscriber":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


