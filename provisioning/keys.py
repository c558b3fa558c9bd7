"""The device's keys and certificates, all in the keys/ folder beside the config.

    keys/device.key   EC P-256 private key (PKCS#8 PEM), never leaves the device
    keys/device.csr   certificate request: CN = device id, O = site name, OU = site code
    keys/device.pem   the certificate the platform signed for device.key
    keys/ca.pem       the platform CA (signs device.pem and the broker's certificate)
    keys/data.key     32 random bytes: seals personal fields at rest (agent.privacy)
    keys/list.key     32 random bytes: keys the hashes of ID numbers in lists
    keys/command.pub  the platform's Ed25519 public key that verifies signed commands

The folder is 0700 and every file in it 0600, owned by root: under systemd the
service reads them through LoadCredential (see systemd/gate-agent.service).
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from agent.privacy import create_key

KEYS_DIR_MODE = 0o700
KEY_MODE = 0o600
EXPIRY_WARNING_DAYS = 30


class KeyProblem(Exception):
    """A key or certificate can't be made, read or accepted; the message says what to do."""


@dataclass
class KeyPaths:
    dir: Path

    @property
    def device_key(self) -> Path:
        return self.dir / "device.key"

    @property
    def device_csr(self) -> Path:
        return self.dir / "device.csr"

    @property
    def device_cert(self) -> Path:
        return self.dir / "device.pem"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def data_key(self) -> Path:
        return self.dir / "data.key"

    @property
    def list_key(self) -> Path:
        return self.dir / "list.key"

    @property
    def command_key(self) -> Path:
        return self.dir / "command.pub"


def make_keys_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, KEYS_DIR_MODE)
    return path


def write_secret(path: Path, data: bytes, replace: bool = False) -> Path:
    """Write a file only its owner can read, durably; never silently replaces one."""
    if path.exists() and not replace:
        raise KeyProblem(f"{path} exists; refusing to overwrite it")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, KEY_MODE)
    os.replace(tmp, path)
    return path


# --- the device key pair and its request ------------------------------------

def create_device_key(path: Path, replace: bool = False) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    write_secret(path, pem, replace)
    return key


def load_device_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise KeyProblem(f"device key {path} not found; create it with "
                         "'gate-agent provision init'") from None
    except PermissionError:
        raise KeyProblem(f"device key {path} is not readable by this user; run with sudo") from None
    except ValueError as exc:
        raise KeyProblem(f"device key {path} is not a PEM private key ({exc}); "
                         "make a new one with 'gate-agent provision init --force --replace-keys'") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyProblem(f"device key {path} is not an EC P-256 key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, device_id: str, site: str,
             site_name: str = "") -> x509.CertificateSigningRequest:
    """The request the platform signs: CN = the 20-digit device id, O = the site's name
    (or its code), OU = the site code used in topics."""
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, device_id),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, site_name or site),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, site),
    ])
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))


def write_csr(path: Path, csr: x509.CertificateSigningRequest) -> Path:
    return write_secret(path, csr.public_bytes(serialization.Encoding.PEM), replace=True)


def same_csr(path: Path, csr: x509.CertificateSigningRequest) -> bool:
    """True if `path` already holds a request for the same subject and key (ECDSA signatures
    differ each time, so a re-run keeps the file the platform may already have)."""
    try:
        old = x509.load_pem_x509_csr(path.read_bytes())
    except (OSError, ValueError):
        return False
    return old.subject == csr.subject and same_public_key(old.public_key(), csr.public_key())


def same_public_key(a, b) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


# --- symmetric keys -----------------------------------------------------------

def create_symmetric_key(path: Path) -> Path:
    """32 random bytes, 0600 (the data key and the list key have the same form)."""
    return create_key(path)


# --- the platform's command key -----------------------------------------------

def read_command_key(source: Path) -> bytes:
    """The PEM of an Ed25519 public key, checked; raises KeyProblem otherwise."""
    try:
        pem = Path(source).read_bytes()
    except OSError as exc:
        raise KeyProblem(f"cannot read the command key {source}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise KeyProblem(f"{source} is not a PEM public key; ask the platform for its "
                         "command-verification key (Ed25519, '-----BEGIN PUBLIC KEY-----')") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyProblem(f"{source} holds a {type(key).__name__.removesuffix('PublicKey') or 'non'} "
                         "key; the command key must be Ed25519")
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def install_command_key(source: Path, dest: Path, replace: bool = False) -> str:
    """Copy the command key into keys/; returns 'installed', 'unchanged' or 'replaced'."""
    pem = read_command_key(source)
    if dest.exists():
        if dest.read_bytes() == pem:
            return "unchanged"
        if not replace:
            raise KeyProblem(f"{dest} holds a different command key; replacing it changes who "
                             "may command this gate: if the platform rotated its key, run "
                             f"'gate-agent provision command-key {source} --force'")
        write_secret(dest, pem, replace=True)
        return "replaced"
    write_secret(dest, pem)
    return "installed"


# --- the certificate the platform signed --------------------------------------

def load_certs(path: Path, what: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyProblem(f"cannot read the {what} {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise KeyProblem(f"{path} is not a certificate (PEM or DER); ask the platform "
                         f"for the {what} again") from None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def check_device_cert(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
                      cas: list[x509.Certificate], device_id: str,
                      now: dt.datetime | None = None) -> list[str]:
    """Raise KeyProblem if `cert` can't be used by this device; return warnings otherwise."""
    now = now or _now()
    if not same_public_key(cert.public_key(), key.public_key()):
        raise KeyProblem("the certificate is not for this device's key (keys/device.key): "
                         "it was issued for another request; send keys/device.csr to the platform "
                         "and install the certificate it returns")
    issuer = _issuer_of(cert, cas)
    if cert.not_valid_before_utc > now:
        raise KeyProblem(f"the certificate is valid only from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                         f"UTC and the clock says {now:%Y-%m-%d %H:%M}: check the clock "
                         "(timedatectl) or wait")
    if cert.not_valid_after_utc < now:
        raise KeyProblem(f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d} "
                         "(check the clock, or ask the platform for a new one for keys/device.csr)")
    warnings = []
    days_left = (cert.not_valid_after_utc - now).days
    if days_left < EXPIRY_WARNING_DAYS:
        warnings.append(f"the certificate expires in {days_left} day(s), on "
                        f"{cert.not_valid_after_utc:%Y-%m-%d}: ask the platform for a new one soon")
    if issuer.not_valid_after_utc < now:
        raise KeyProblem(f"the CA certificate expired on {issuer.not_valid_after_utc:%Y-%m-%d}")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = names[0].value if names else ""
    if common_name != device_id:
        warnings.append(f"the certificate's CN is {common_name!r}, not this device's id {device_id}: "
                        "the platform may reject it")
    return warnings


def _issuer_of(cert: x509.Certificate, cas: list[x509.Certificate]) -> x509.Certificate:
    if not cas:
        raise KeyProblem("no CA certificate: give the platform CA file as the second argument")
    last_error = ""
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return ca
        except ValueError as exc:
            last_error = str(exc)
        except InvalidSignature:
            last_error = f"its signature does not verify with the key of {ca.subject.rfc4514_string()}"
        except TypeError as exc:
            last_error = str(exc)
    subjects = "; ".join(ca.subject.rfc4514_string() for ca in cas)
    raise KeyProblem(f"the certificate (issuer {cert.issuer.rfc4514_string()}) was not signed by "
                     f"the CA given ({subjects}): {last_error}; ask the platform for its CA certificate")


def cert_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
