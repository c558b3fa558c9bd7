"""SIGKILL a separate sync process at random moments while it drains: nothing is lost."""
import json
import os
import random
import signal
import subprocess
import sys
import time

from agent import config as configmod
from agent.privacy import Sealer, load_key
from agent.store import open_store
from hil.broker import Mosquitto, Subscriber
from tests.conftest import MINIMAL, ROOT

ROUNDS = 20
PER_ROUND = 150

CHILD = """
import sys, time
from agent import config
from agent.privacy import Sealer, load_key
from agent.store import open_store
from agent.sync import SyncEngine
cfg = config.load(sys.argv[1])
store = open_store(cfg, Sealer(load_key(cfg.privacy.key_file)))
engine = SyncEngine(cfg, store, downlink=False, backoff_start=0.05, backoff_max=0.2)
engine.start()
engine._connected.wait(10)
print("connected", flush=True)
while True:
    time.sleep(1)
"""

KINDS = [("plate_read", {"lane": "in1", "plate_no": "辽A12345", "plate_color": "blue", "plate_class": "02",
                         "confidence": 0.9, "pass_time": "20261124100000", "motor_vehicle": True}),
         ("card_read", {"reader": "id1", "card_kind": "resident", "id_number": "210102199001011234"}),
         ("alarm", {"button": "b1", "location": "desk", "drill": False, "pressed_at": "t"}),
         ("barrier", {"lane": "in1", "action": "open", "cause": "decision"})]


def start_child(config_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(config_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "connected", f"sync child did not connect: {line!r}"
    return proc


def test_sigkill_during_drain_loses_nothing(tmp_path, data_key):
    rng = random.Random(7)
    with Mosquitto() as broker, Subscriber(broker.port, "gate/+/+/records/#") as sub:
        path = tmp_path / "config.toml"
        path.write_text(MINIMAL.replace("1883", str(broker.port)).replace("[mqtt]\n", "[mqtt]\ninflight = 4\n")
                        .format(data_dir=tmp_path / "data"))
        cfg = configmod.load(path)
        store = open_store(cfg, Sealer(load_key(cfg.privacy.key_file)))
        created = {}
        killed_mid_drain = 0
        try:
            for _ in range(ROUNDS):
                for i in range(PER_ROUND):
                    kind, data = KINDS[i % len(KINDS)]
                    record = store.add(kind, data)
                    created[record.uuid] = record
                proc = start_child(path)
                time.sleep(rng.uniform(0.0, 0.12))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc.stdout.close()
                if store.depth()["total"] > 0:
                    killed_mid_drain += 1
            assert killed_mid_drain >= ROUNDS // 2, "most kills must land while records are unsent"
            proc = start_child(path)   # the last run finishes the drain
            try:
                deadline = time.monotonic() + 30
                while store.depth()["total"] and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                proc.stdout.close()
            assert store.depth()["total"] == 0
            assert sub.wait_for(lambda m: {r["uuid"] for r in sub.records()} >= set(created), 20)
            received = sub.records()
            assert {r["uuid"] for r in received} == set(created), "nothing foreign, nothing lost"
            first = {}
            for r in received:   # a duplicate is the same record, byte for byte
                assert first.setdefault(r["uuid"], r) == r
                assert r["kind"] == created[r["uuid"]].kind
        finally:
            store.close()
