"""provision init / cert install / command-key / csr: files, modes, keys, and every error path."""
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from agent import config as configmod
from agent.cli import cli
from provisioning.testca import TestCA

DEVICE_ID = "21010200001210000001"
FLAGS = ["--site", "ln-sy-bank-012", "--site-name", "沈阳某银行", "--device-id", DEVICE_ID,
         "--broker", "mqtts://platform.example:8883"]


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def init(root, *extra):
    return invoke("provision", "init", "--yes", "--root", root, *FLAGS, *extra)


def config_path(root: Path) -> Path:
    return root / "etc" / "gate-agent" / "config.toml"


def keys(root: Path) -> Path:
    return root / "etc" / "gate-agent" / "keys"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "root"


# --- init from flags ----------------------------------------------------------------

def test_init_from_flags_writes_a_config_the_agent_loads(root):
    result = init(root, "--lanes", "in1,out1", "--camera", "in1=picamera2", "--roi", "in1=100,200,1180,700",
                  "--reader", "in1=idcard:/dev/ttyUSB0", "--reader", "out1=rdm6300:/dev/ttyAMA0",
                  "--pin", "out1.guard_lamp=none", "--alarm-button", "b1:23:nc:1F cashier",
                  "--retention", "180", "--retention", "health=30")
    assert result.exit_code == 0, result.output
    cfg = configmod.load(config_path(root))  # key files checked too
    assert cfg.device.id == DEVICE_ID and cfg.device.site_name == "沈阳某银行"
    assert [lane.name for lane in cfg.lanes] == ["in1", "out1"]
    assert cfg.lanes[0].camera == "picamera2" and cfg.lanes[0].roi == [100, 200, 1180, 700]
    assert cfg.lanes[0].barrier.pin == 17 and cfg.lanes[1].barrier.pin == 18
    assert cfg.lanes[1].guard_lamp.pin is None and cfg.lanes[1].direction == "out"
    assert [(r.kind, r.port, r.lane) for r in cfg.readers] == [
        ("idcard", "/dev/ttyUSB0", "in1"), ("rdm6300", "/dev/ttyAMA0", "out1")]
    button = cfg.alarm.buttons[0]
    assert (button.pin, button.wiring, button.location) == (23, "nc", "1F cashier")
    assert cfg.storage.retention.alarm == 180 and cfg.storage.retention.health == 30
    assert cfg.storage.data_dir == str(root.resolve() / "var/lib/gate-agent")
    assert Path(cfg.storage.data_dir).is_dir()
    assert cfg.mqtt.key_file == str(keys(root) / "device.key")
    check = invoke("--config", config_path(root), "config", "check")
    assert check.exit_code == 0 and "ok: device 21010200001210000001" in check.output


def test_init_sets_file_modes(root):
    assert init(root).exit_code == 0
    assert mode(config_path(root)) == 0o640
    assert mode(keys(root)) == 0o700
    for name in ("device.key", "device.csr", "data.key", "list.key"):
        assert mode(keys(root) / name) == 0o600, name
    assert len((keys(root) / "data.key").read_bytes()) == 32
    assert len((keys(root) / "list.key").read_bytes()) == 32
    assert (keys(root) / "data.key").read_bytes() != (keys(root) / "list.key").read_bytes()


def test_csr_names_the_device_and_matches_its_key(root):
    assert init(root).exit_code == 0
    csr = x509.load_pem_x509_csr((keys(root) / "device.csr").read_bytes())
    key = serialization.load_pem_private_key((keys(root) / "device.key").read_bytes(), None)
    assert csr.is_signature_valid
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEVICE_ID
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "ln-sy-bank-012"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "沈阳某银行"
    der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert csr.public_key().public_bytes(*der) == key.public_key().public_bytes(*der)
    shown = invoke("provision", "csr", "--root", root)
    assert shown.exit_code == 0 and shown.output == (keys(root) / "device.csr").read_text()


def test_rerun_keeps_config_and_keys(root):
    assert init(root).exit_code == 0
    before = {p.name: p.read_bytes() for p in keys(root).iterdir()}
    config_before = config_path(root).read_text()
    again = invoke("provision", "init", "--yes", "--root", root, "--site", "other-site",
                   "--device-id", "21010200001410000002", "--broker", "mqtts://x:8883")
    assert again.exit_code == 0, again.output
    assert "kept" in again.output and "rewrite it with --force" in again.output
    assert config_path(root).read_text() == config_before
    after = {p.name: p.read_bytes() for p in keys(root).iterdir()}
    assert after == before
    (keys(root) / "list.key").unlink()
    repaired = invoke("provision", "init", "--yes", "--root", root)
    assert repaired.exit_code == 0, repaired.output
    assert "made       " + str(keys(root) / "list.key") in repaired.output
    assert (keys(root) / "data.key").read_bytes() == before["data.key"]


def test_force_rewrites_config_with_backup_and_keeps_keys(root):
    assert init(root).exit_code == 0
    data_key = (keys(root) / "data.key").read_bytes()
    device_key = (keys(root) / "device.key").read_bytes()
    result = invoke("provision", "init", "--yes", "--force", "--root", root, "--site", "other-site",
                    "--device-id", "21010200001410000002", "--broker", "mqtts://x:8883")
    assert result.exit_code == 0, result.output
    assert configmod.load(config_path(root)).device.site == "other-site"
    backups = list(config_path(root).parent.glob("config.toml.bak-*"))
    assert len(backups) == 1 and "ln-sy-bank-012" in backups[0].read_text()
    assert (keys(root) / "data.key").read_bytes() == data_key
    assert (keys(root) / "device.key").read_bytes() == device_key
    csr = x509.load_pem_x509_csr((keys(root) / "device.csr").read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "21010200001410000002"


def test_replace_keys_needs_force(root):
    assert init(root).exit_code == 0
    device_key = (keys(root) / "device.key").read_bytes()
    refused = invoke("provision", "init", "--yes", "--replace-keys", "--root", root, *FLAGS)
    assert refused.exit_code == 2 and "--replace-keys needs --force" in refused.output
    assert (keys(root) / "device.key").read_bytes() == device_key
    replaced = invoke("provision", "init", "--yes", "--force", "--replace-keys", "--root", root, *FLAGS)
    assert replaced.exit_code == 0, replaced.output
    assert (keys(root) / "device.key").read_bytes() != device_key


@pytest.mark.parametrize("args, message", [
    (["--device-id", "2101020000121000000"], "--device-id '2101020000121000000': expected 20 digits"),
    (["--device-id", "21010200009990000001"], "type digits 11-13"),
    (["--site", "bad site!"], "--site 'bad site!'"),
    (["--broker", "http://x"], "--broker 'http://x': expected mqtt://"),
    (["--broker", "mqtt://127.0.0.1:1883"], "needs --allow-plaintext"),
    (["--pin", "in1.barrier=40"], "not a BCM pin number 0-27"),
    (["--pin", "in1.barrier=23"], "pin 23 is already used"),
    (["--pin", "in9.barrier=3"], "expected PART=PIN"),
    (["--reader", "card:/dev/ttyUSB0"], "expected KIND:PORT"),
    (["--camera", "/dev/video0", "--roi", "10,10,5,5"], "x2 > x1"),
    (["--alarm-button", "b1"], "expected NAME:PIN"),
    (["--alarm-button", "b1:99:desk"], "not a BCM pin number 0-27"),
    (["--retention", "forever"], "DAYS 1-3650"),
    (["--retention", "photos=30"], "unknown kind 'photos'"),
])
def test_bad_flags_are_one_line_errors(root, args, message):
    flags = dict(zip(FLAGS[::2], FLAGS[1::2]))
    extra = []
    for flag, value in zip(args[::2], args[1::2]):
        if flag in flags:
            flags[flag] = value
        else:
            extra += [flag, value]
    result = invoke("provision", "init", "--yes", "--root", root, *[x for kv in flags.items() for x in kv],
                    *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not config_path(root).exists()


def test_init_where_it_cannot_write_stops_before_asking(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    result = invoke("--config", tmp_path / "etc/config.toml", "provision", "init", input="")
    assert result.exit_code == 2 and "run with sudo" in result.output
    assert "Site code" not in result.output


def test_missing_required_flag_says_which(root):
    result = invoke("provision", "init", "--yes", "--root", root, "--site", "s1", "--device-id", DEVICE_ID)
    assert result.exit_code == 2
    assert "missing --broker" in result.output


def test_plaintext_broker_with_flag(root):
    result = init(root, "--broker", "mqtt://127.0.0.1:1883", "--allow-plaintext")
    assert result.exit_code == 0, result.output
    assert configmod.load(config_path(root)).mqtt.allow_plaintext is True


# --- interactive init -----------------------------------------------------------------

def test_interactive_init_reasks_bad_answers(root):
    answers = [
        "ln-sy-school-3",          # site code
        "",                        # site name: none
        "12345",                   # device id: wrong, asked again
        DEVICE_ID,
        "",                        # lanes: in1
        "", "4", "", "",           # barrier 17, confirm 4, presence 27, manual open 22
        "17", "",                  # guard lamp: 17 is taken, asked again -> 5
        "/srv/frames",             # camera
        "0,0,800,600",             # roi
        "",                        # reader: idcard:/dev/ttyUSB0
        "1", "", "", "gate 2 desk", "nc",   # one alarm button b1 on 23
        "", "none", "",            # siren 24, no ack lamp, drill lamp 6
        "mqtts://10.0.0.5:8883",   # broker
        "90",                      # retention
        "y",                       # write?
    ]
    result = invoke("provision", "init", "--root", root, input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    assert "expected 20 digits" in result.output
    assert "pin 17 is already used" in result.output
    cfg = configmod.load(config_path(root))
    lane = cfg.lanes[0]
    assert cfg.device.id == DEVICE_ID and cfg.device.site == "ln-sy-school-3" and cfg.device.site_name == ""
    assert (lane.barrier.pin, lane.barrier_confirm.pin, lane.guard_lamp.pin) == (17, 4, 5)
    assert lane.camera == "/srv/frames" and lane.roi == [0, 0, 800, 600]
    assert cfg.readers[0].port == "/dev/ttyUSB0"
    assert cfg.alarm.buttons[0].location == "gate 2 desk" and cfg.alarm.buttons[0].wiring == "nc"
    assert cfg.alarm.ack_lamp.pin is None and cfg.alarm.siren.pin == 24
    assert cfg.mqtt.url == "mqtts://10.0.0.5:8883"
    assert cfg.storage.retention.image == 90


def test_interactive_init_can_be_declined(root):
    answers = ["s1", "", DEVICE_ID, "", "", "", "", "", "", "", "", "1", "", "", "", "", "", "", "",
               "mqtts://h:8883", "", "n"]
    result = invoke("provision", "init", "--root", root, input="\n".join(answers) + "\n")
    assert result.exit_code == 2, result.output
    assert "nothing written" in result.output
    assert not config_path(root).exists()


# --- command key --------------------------------------------------------------------------

def _public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def test_command_key_installed_checked_and_not_silently_replaced(root, tmp_path):
    good = tmp_path / "command.pub"
    good.write_bytes(_public_pem(ed25519.Ed25519PrivateKey.generate()))
    assert init(root, "--command-key", good).exit_code == 0
    installed = keys(root) / "command.pub"
    assert installed.read_bytes() == good.read_bytes() and mode(installed) == 0o600
    other = tmp_path / "other.pub"
    other.write_bytes(_public_pem(ed25519.Ed25519PrivateKey.generate()))
    refused = invoke("provision", "command-key", other, "--root", root)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert installed.read_bytes() == good.read_bytes()
    assert invoke("provision", "command-key", other, "--root", root, "--force").exit_code == 0
    assert installed.read_bytes() == other.read_bytes()
    rsa_key = tmp_path / "rsa.pub"
    rsa_key.write_bytes(_public_pem(rsa.generate_private_key(65537, 2048)))
    wrong = invoke("provision", "command-key", rsa_key, "--root", root, "--force")
    assert wrong.exit_code == 2 and "must be Ed25519" in wrong.output
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    assert "not a PEM public key" in invoke("provision", "command-key", junk, "--root", root).output


# --- certificate install ----------------------------------------------------------------------

@pytest.fixture
def provisioned(root):
    assert init(root).exit_code == 0
    return root


def _write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_cert_install_good(provisioned, tmp_path):
    ca = TestCA.create()
    cert = _write(tmp_path, "device.pem", ca.sign_csr((keys(provisioned) / "device.csr").read_bytes()))
    ca_file = _write(tmp_path, "ca.pem", ca.pem)
    result = invoke("provision", "cert", "install", cert, ca_file, "--root", provisioned)
    assert result.exit_code == 0, result.output
    assert (keys(provisioned) / "device.pem").read_bytes() == cert.read_bytes()
    assert (keys(provisioned) / "ca.pem").read_bytes() == ca.pem
    assert mode(keys(provisioned) / "device.pem") == 0o600
    cfg = configmod.load(config_path(provisioned))
    assert cfg.mqtt.cert_file == str(keys(provisioned) / "device.pem")
    assert cfg.mqtt.ca_file == str(keys(provisioned) / "ca.pem")
    assert mode(config_path(provisioned)) == 0o640
    assert invoke("--config", config_path(provisioned), "config", "check").exit_code == 0
    # again, with the CA already installed: nothing to change in the config
    again = invoke("provision", "cert", "install", cert, "--root", provisioned)
    assert again.exit_code == 0 and "config:" not in again.output


def test_cert_for_another_key_is_refused(provisioned, tmp_path):
    ca = TestCA.create()
    stranger = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE_ID)])
    cert = _write(tmp_path, "device.pem", ca.sign(subject, stranger.public_key()).public_bytes(
        serialization.Encoding.PEM))
    result = invoke("provision", "cert", "install", cert, _write(tmp_path, "ca.pem", ca.pem),
                    "--root", provisioned)
    assert result.exit_code == 2
    assert "not for this device's key" in result.output
    assert not (keys(provisioned) / "device.pem").exists()
    assert configmod.load(config_path(provisioned)).mqtt.cert_file == ""


def test_cert_from_another_ca_is_refused(provisioned, tmp_path):
    signer, other = TestCA.create("platform CA"), TestCA.create("some other CA")
    cert = _write(tmp_path, "device.pem", signer.sign_csr((keys(provisioned) / "device.csr").read_bytes()))
    result = invoke("provision", "cert", "install", cert, _write(tmp_path, "ca.pem", other.pem),
                    "--root", provisioned)
    assert result.exit_code == 2
    assert "was not signed by the CA given" in result.output
    # same name, different key: the signature check is what catches it
    impostor = TestCA.create("platform CA")
    result = invoke("provision", "cert", "install", cert, _write(tmp_path, "imp.pem", impostor.pem),
                    "--root", provisioned)
    assert result.exit_code == 2 and "signature does not verify" in result.output
    assert not (keys(provisioned) / "device.pem").exists()


def test_expired_and_not_yet_valid_certs_are_refused(provisioned, tmp_path):
    ca = TestCA.create()
    csr = (keys(provisioned) / "device.csr").read_bytes()
    ca_file = _write(tmp_path, "ca.pem", ca.pem)
    expired = _write(tmp_path, "old.pem", ca.sign_csr(csr, start_days=-400, days=-1))
    result = invoke("provision", "cert", "install", expired, ca_file, "--root", provisioned)
    assert result.exit_code == 2 and "expired" in result.output
    future = _write(tmp_path, "future.pem", ca.sign_csr(csr, start_days=2, days=400))
    result = invoke("provision", "cert", "install", future, ca_file, "--root", provisioned)
    assert result.exit_code == 2 and "check the clock" in result.output
    soon = _write(tmp_path, "soon.pem", ca.sign_csr(csr, days=5))
    result = invoke("provision", "cert", "install", soon, ca_file, "--root", provisioned)
    assert result.exit_code == 0 and "expires in" in result.output


def test_cert_install_errors(provisioned, tmp_path):
    junk = _write(tmp_path, "junk.pem", b"not a cert")
    result = invoke("provision", "cert", "install", junk, junk, "--root", provisioned)
    assert result.exit_code == 2 and "is not a certificate" in result.output
    ca = TestCA.create()
    cert = _write(tmp_path, "device.pem", ca.sign_csr((keys(provisioned) / "device.csr").read_bytes()))
    result = invoke("provision", "cert", "install", cert, "--root", provisioned)
    assert result.exit_code == 2 and "no CA certificate given" in result.output
    empty_root = tmp_path / "empty"
    result = invoke("provision", "cert", "install", cert, "--root", empty_root)
    assert result.exit_code == 2 and "provision init" in result.output


# --- systemd credentials ------------------------------------------------------------------

def test_config_reads_keys_from_systemd_credentials(provisioned, tmp_path, monkeypatch):
    credentials = tmp_path / "creds"
    credentials.mkdir()
    for name in ("data.key", "list.key", "device.key"):
        copy = credentials / f"keys_{name}"
        copy.write_bytes((keys(provisioned) / name).read_bytes())
        os.chmod(copy, 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    cfg = configmod.load(config_path(provisioned))
    assert cfg.privacy.key_file == str(credentials / "keys_data.key")
    assert cfg.decisions.list_key_file == str(credentials / "keys_list.key")
    assert cfg.mqtt.key_file == str(credentials / "keys_device.key")
    # not handed over: the original path stays
    assert cfg.mqtt.command_key_file == str(keys(provisioned) / "command.pub")
    from agent.privacy import load_key
    assert load_key(cfg.privacy.key_file) == (keys(provisioned) / "data.key").read_bytes()


def test_unwritable_files_are_one_line_errors(provisioned, tmp_path, monkeypatch):
    from provisioning import keys as keysmod

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(keysmod, "write_secret", refuse)
    ca = TestCA.create()
    cert = _write(tmp_path, "device.pem", ca.sign_csr((keys(provisioned) / "device.csr").read_bytes()))
    result = invoke("provision", "cert", "install", cert, _write(tmp_path, "ca.pem", ca.pem),
                    "--root", provisioned)
    assert result.exit_code == 2
    assert "device.pem: permission denied; run with sudo" in result.output
    fresh = invoke("provision", "init", "--yes", "--root", tmp_path / "fresh", *FLAGS)
    assert fresh.exit_code == 2 and "permission denied" in fresh.output


def test_scripted_install_as_a_separate_process(tmp_path):
    from conftest import run_cli
    root = tmp_path / "image"
    made = run_cli("provision", "init", "--yes", "--root", root, *FLAGS)
    assert made.returncode == 0, made.stderr
    checked = run_cli("--config", config_path(root), "config", "check")
    assert checked.returncode == 0, checked.stderr
    bad = run_cli("provision", "init", "--yes", "--root", tmp_path / "other", "--site", "s1")
    assert bad.returncode == 2
    assert bad.stderr.startswith("gate-agent: missing --device-id") and "Traceback" not in bad.stderr
