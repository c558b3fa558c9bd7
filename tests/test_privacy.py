import os

import pytest

from agent.privacy import KeyError_, Sealer, create_key, load_key, masked


def test_key_created_0600_and_not_overwritten(tmp_path):
    path = create_key(tmp_path / "k")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with pytest.raises(KeyError_, match="refusing to overwrite"):
        create_key(path)
    assert len(load_key(path)) == 32


def test_loose_key_mode_refused(tmp_path):
    path = create_key(tmp_path / "k")
    os.chmod(path, 0o644)
    with pytest.raises(KeyError_, match="chmod 600"):
        load_key(path)


def test_wrong_size_key_refused(tmp_path):
    path = tmp_path / "k"
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(KeyError_, match="5 bytes"):
        load_key(path)


def test_seal_bound_to_record(tmp_path):
    sealer = Sealer(load_key(create_key(tmp_path / "k")))
    blob = sealer.seal({"id_number": "360426199101010071"}, "uuid-1")
    assert sealer.open(blob, "uuid-1") == {"id_number": "360426199101010071"}
    with pytest.raises(Exception):
        sealer.open(blob, "uuid-2")


def test_masked_view():
    view = masked({"id_number": "21010519491231123X", "name": "王小明", "address": "沈阳市",
                   "inputs": {"id_number": "21010519491231123X"}, "lane": "in1"})
    assert view == {"id_number": "2101**********123X", "name": "王**", "address": "<withheld>",
                    "inputs": {"id_number": "2101**********123X"}, "lane": "in1"}
