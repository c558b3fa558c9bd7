import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("GATE_SHARED", ROOT.parent / "shared"))
PLATES = SHARED / "data" / "plates"

MINIMAL = """
[device]
id = "21010200001210000001"
site = "test-site"

[[lanes]]
name = "in1"

[storage]
data_dir = "{data_dir}"

[mqtt]
url = "mqtt://127.0.0.1:1883"
allow_plaintext = true
"""


@pytest.fixture
def data_key(tmp_path):
    """keys/data.key and keys/list.key beside the test's config.toml, as provisioning makes them."""
    from agent.privacy import create_key
    create_key(tmp_path / "keys" / "list.key")
    return create_key(tmp_path / "keys" / "data.key")


@pytest.fixture
def config_file(tmp_path, data_key):
    """A minimal valid config; call it with extra TOML to append."""
    def make(extra: str = "", base: str = MINIMAL) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(base.format(data_dir=tmp_path / "data") + extra)
        return path
    return make


@pytest.fixture
def store(tmp_path, data_key):
    from agent.privacy import Sealer, load_key
    from agent.store import Store
    s = Store(tmp_path / "data", device_id="21010200001210000001", site="test-site",
              sealer=Sealer(load_key(data_key)), reserve_mb=1)
    yield s
    s.close()


def run_cli(*args, env=None, timeout=60, input=None):
    """Run `python -m agent ARGS` as a separate process, as a user would."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT))
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, input=input)


def need_plates():
    if not PLATES.is_dir():
        pytest.skip(f"real plate images not found at {PLATES} (../shared/data/plates)")
    return PLATES


@pytest.fixture
def factory():
    """gpiozero's MockFactory (tests/gpio_rig.py), released after the test."""
    from gpio_rig import mock_factory, release
    f = mock_factory()
    yield f
    release(f)
