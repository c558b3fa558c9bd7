"""Scenario files: a timeline of stimuli and the expectations, with deadlines, that judge it.

A scenario is a TOML file in hil/scenarios/ (format in docs/hil.md). Loading
checks every key and names the file, the key, the bad value and what is
allowed, like the agent's own config does.
"""
from __future__ import annotations

import importlib.util
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
REPO = Path(__file__).resolve().parent.parent

# What a scenario may need, and the modules (or "file:" paths in the repository, such as
# the trained model) that must exist for it to run.
PARTS = {
    "gpio": ("drivers.gpio",),
    "readers": ("drivers.readers", "drivers.reader_sim"),
    "sync": ("agent.sync",),
    "vision": ("agent.vision", "drivers.camera", "models.recognizer",
               "file:models/manifest.json", "file:models/plate_ocr.onnx",
               "file:models/second/manifest.json", "file:models/second/plate_ocr.onnx"),
    "model": ("models.synth",),
    "decisions": ("agent.decisions", "agent.lists"),
    "real_plates": (),   # the labelled plate photos in ../shared/data/plates (GATE_SHARED)
}

# Each stimulus: the arguments it takes (name -> (type, default; REQUIRED if none)).
REQUIRED = object()
STEPS: dict[str, dict[str, tuple]] = {
    "car": {"lane": (str, "in1"), "plate": (str, REQUIRED), "color": (str, "blue"),
            "image": (str, "synth"), "frames": (int, 3), "dwell_s": (float, 2.0),
            "presence": (bool, True)},
    "traffic": {"lane": (str, "in1"), "count": (int, REQUIRED), "interval_ms": (int, 1000),
                "image": (str, "synth"), "seed": (int, 1), "dwell_s": (float, 0.5),
                "frames": (int, 1)},
    "card_place": {"reader": (str, "id1"), "card": (dict, REQUIRED)},
    "card_remove": {"reader": (str, "id1")},
    "press": {"button": (str, "b1"), "ms": (int, 200), "repeat": (int, 1), "gap_ms": (int, 300)},
    "drive": {"pin": ((str, int), REQUIRED), "level": (int, REQUIRED), "ms": (int, 0)},
    "broker_down": {},
    "broker_up": {},
    "kill": {},
    "restart": {},
    "damage_store": {},
    "camera_stop": {"lane": (str, "in1")},
    "camera_return": {"lane": (str, "in1")},
    "reader_unplug": {"reader": (str, "id1")},
    "reader_replug": {"reader": (str, "id1")},
    "drill": {"on": (bool, True), "minutes": (float, 10.0)},
    "wait": {},
}
COMMON_STEP_KEYS = {"at": (float, REQUIRED), "do": (str, REQUIRED), "id": (str, ""), "say": (str, ""),
                    "wait_records": (int, 0), "wait_s": (float, 0.0)}
IMAGE_SOURCES = ("synth", "real")
LIST_NAMES = ("staff_vehicles", "staff", "visitors", "watchlist")  # agent/lists.py

EXPECT_KINDS = ("pin", "record", "all_synced", "count")
EXPECT_KEYS = {
    "name": (str, ""), "after": (str, ""), "within_ms": (int, 2000), "never": (bool, False),
    "pin": ((str, int), None), "on": (bool, True), "level": (int, None),
    "record": (str, None), "fields": (dict, {}), "topic": (str, ""),
    "all_synced": (bool, None),
    "count": (str, None), "min": (int, 0), "min_per_vehicle": (float, 0.0),
    "max_per_vehicle": (float, 0.0),
}


class ScenarioError(ValueError):
    """A mistake in a scenario file; the message names file, key, value and what is allowed."""


@dataclass
class Step:
    at: float
    do: str
    id: str = ""
    wait_records: int = 0
    wait_s: float = 0.0
    say: str = ""
    """what the step stands for, in words (the demo narrates it)"""
    args: dict = field(default_factory=dict)

    def __str__(self) -> str:
        label = f" [{self.id}]" if self.id else ""
        return f"t={self.at:g}s {self.do}{label}"


@dataclass
class Expect:
    kind: str
    name: str
    after: str = ""
    within_ms: int = 2000
    never: bool = False
    pin: str | int | None = None
    on: bool = True
    level: int | None = None
    record: str | None = None
    fields: dict = field(default_factory=dict)
    topic: str = ""
    count: str | None = None
    min: int = 0
    min_per_vehicle: float = 0.0
    max_per_vehicle: float = 0.0
    """0: no upper bound; 1.0 with min_per_vehicle 1.0: exactly one per vehicle"""


@dataclass
class Scenario:
    name: str
    path: Path
    description: str
    needs: list[str]
    fast: bool
    timeout_s: float
    config: dict
    lists: dict[str, str]
    """list name -> CSV text, imported with `gate-agent lists import` before the agent starts"""
    steps: list[Step]
    expects: list[Expect]

    def missing_parts(self) -> list[str]:
        """The modules (or data) this scenario needs that are not here yet."""
        missing = [need for part in self.needs for need in PARTS.get(part, ()) if not exists(need)]
        if "real_plates" in self.needs and not shared_plates().is_dir():
            missing.append(f"real plate photos ({shared_plates()}; set GATE_SHARED)")
        return missing


def shared_plates() -> Path:
    base = Path(os.environ.get("GATE_SHARED", REPO.parent / "shared"))
    return base / "data" / "plates"


def exists(need: str) -> bool:
    if need.startswith("file:"):
        return (REPO / need[5:]).is_file()
    return module_exists(need)


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def _typed(where: str, key: str, value: Any, kind) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and bool not in kinds:
        raise ScenarioError(f"{where}.{key} = {value!r}: expected {_kind_names(kinds)}")
    if not isinstance(value, kinds):
        raise ScenarioError(f"{where}.{key} = {value!r}: expected {_kind_names(kinds)}")
    return value


def _kind_names(kinds) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "a table", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _fill(where: str, table: dict, spec: dict, extra_ok: set = frozenset()) -> dict:
    unknown = set(table) - set(spec) - set(extra_ok)
    if unknown:
        raise ScenarioError(f"{where}.{sorted(unknown)[0]}: unknown key; allowed here: "
                            f"{', '.join(sorted(set(spec) | set(extra_ok)))}")
    out = {}
    for key, (kind, default) in spec.items():
        if key in table:
            out[key] = _typed(where, key, table[key], kind)
        elif default is REQUIRED:
            raise ScenarioError(f"{where}.{key}: missing; expected {_kind_names(kind if isinstance(kind, tuple) else (kind,))}")
        else:
            out[key] = default
    return out


def parse(text: str, path: Path) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build(data, path)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def _build(data: dict, path: Path) -> Scenario:
    top = _fill("", data, {"name": (str, path.stem), "description": (str, ""), "needs": (list, []),
                           "fast": (bool, False), "timeout_s": (float, 60.0), "config": (dict, {}),
                           "lists": (dict, {}), "step": (list, []), "expect": (list, [])})
    for part in top["needs"]:
        if part not in PARTS:
            raise ScenarioError(f"needs = {part!r}: unknown part; known: {', '.join(PARTS)}")
    lists = _fill("lists", top["lists"], {name: (str, "") for name in LIST_NAMES})
    steps = [_step(i, raw) for i, raw in enumerate(top["step"])]
    if [s.at for s in steps] != sorted(s.at for s in steps):
        raise ScenarioError("step: steps must be listed in time order (their 'at' increasing)")
    ids = [s.id for s in steps if s.id]
    for i, step in enumerate(steps):
        if step.id and ids.count(step.id) > 1:
            raise ScenarioError(f"step[{i}].id = {step.id!r}: used by more than one step")
    expects = [_expect(i, raw, set(ids)) for i, raw in enumerate(top["expect"])]
    if not expects:
        raise ScenarioError("expect: a scenario needs at least one [[expect]]; what would it judge?")
    return Scenario(name=top["name"], path=path, description=top["description"].strip(),
                    needs=top["needs"], fast=top["fast"], timeout_s=top["timeout_s"],
                    config=top["config"], lists={k: v for k, v in lists.items() if v.strip()}, steps=steps, expects=expects)


def _step(i: int, raw: Any) -> Step:
    where = f"step[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} = {raw!r}: expected a table ([[step]])")
    do = raw.get("do")
    if do not in STEPS:
        raise ScenarioError(f"{where}.do = {do!r}: expected one of {', '.join(STEPS)}")
    spec = STEPS[do]
    common = _fill(where, {k: v for k, v in raw.items() if k in COMMON_STEP_KEYS}, COMMON_STEP_KEYS)
    args = _fill(where, {k: v for k, v in raw.items() if k not in COMMON_STEP_KEYS}, spec,
                 extra_ok=set(COMMON_STEP_KEYS))
    if "image" in args and args["image"] not in IMAGE_SOURCES:
        raise ScenarioError(f"{where}.image = {args['image']!r}: expected one of "
                            f"{', '.join(map(repr, IMAGE_SOURCES))}")
    return Step(at=common["at"], do=do, id=common["id"], wait_records=common["wait_records"],
                wait_s=common["wait_s"], say=common["say"], args=args)


def _expect(i: int, raw: Any, step_ids: set[str]) -> Expect:
    where = f"expect[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where} = {raw!r}: expected a table ([[expect]])")
    values = _fill(where, raw, EXPECT_KEYS)
    kinds = [k for k in EXPECT_KINDS if raw.get(k) is not None]
    if len(kinds) != 1:
        raise ScenarioError(f"{where}: give exactly one of {', '.join(EXPECT_KINDS)} "
                            f"(found {', '.join(kinds) or 'none'})")
    if values["after"] and values["after"] not in step_ids:
        raise ScenarioError(f"{where}.after = {values['after']!r}: no step has that id; "
                            f"ids: {', '.join(sorted(step_ids)) or 'none'}")
    kind = kinds[0]
    values.pop("all_synced")
    return Expect(kind=kind, **{**values, "name": values["name"] or _describe(kind, values)})


def _describe(kind: str, v: dict) -> str:
    after = f" after {v['after']}" if v["after"] else ""
    if kind == "pin":
        state = f"level {v['level']}" if v["level"] is not None else ("on" if v["on"] else "off")
        verb = "never goes" if v["never"] else "goes"
        return f"{v['pin']} {verb} {state}{after} within {v['within_ms']} ms"
    if kind == "record":
        fields = ", ".join(f"{k}={val}" for k, val in v["fields"].items())
        what = f"{v['record']}" + (f" ({fields})" if fields else "")
        verb = "no" if v["never"] else "a"
        return f"{verb} {what} at the broker{after} within {v['within_ms']} ms"
    if kind == "count":
        need = (f"{v['min_per_vehicle']:g} per vehicle" if v["min_per_vehicle"] else f"{v['min']}")
        most = f", at most {v['max_per_vehicle']:g} per vehicle" if v["max_per_vehicle"] else ""
        fields = ", ".join(f"{k}={val}" for k, val in v["fields"].items())
        what = v["count"] + (f" ({fields})" if fields else "")
        return f"at least {need}{most} {what} record(s) at the broker"
    return f"every stored record reaches the broker (within {v['within_ms']} ms of the last step)"


def load(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror}") from None
    return parse(text, path)


def discover(names: list[str] | tuple = (), folder: Path = SCENARIOS) -> list[Scenario]:
    """Scenarios by file path or name (file stem), or all in `folder` when none is named."""
    if not names:
        return [load(p) for p in sorted(folder.glob("*.toml"))]
    out = []
    for name in names:
        path = Path(name)
        if not path.suffix:
            path = folder / f"{name}.toml"
        if not path.exists():
            known = ", ".join(p.stem for p in sorted(folder.glob("*.toml")))
            raise ScenarioError(f"no scenario {name!r}; known: {known}")
        out.append(load(path))
    return out
