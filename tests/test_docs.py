"""The documentation the README points to exists and matches the code it describes:
every record kind's shape and example, every config key, every linked page."""
import json
import re

import pytest

from agent import config as configmod
from agent.records import KINDS, new_record
from tests.conftest import ROOT

DOCS = ROOT / "docs"
REGENERATE = ".venv/bin/python -c 'import agent.config as c; c.write_reference(\"docs/config.md\")'"


# --- records.md -------------------------------------------------------------------

def kind_sections() -> dict[str, str]:
    """Kind name -> the text of its `### \\`kind\\`` subsection under "## Kinds"."""
    text = (DOCS / "records.md").read_text(encoding="utf-8")
    assert "\n## Kinds\n" in text, "docs/records.md has no '## Kinds' section"
    kinds_part = text.split("\n## Kinds\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### `([a-z_]+)`\s*$", kinds_part, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def field_rows(section: str) -> dict[str, str]:
    """Field -> its marks column, from the section's `| field | | meaning |` table."""
    assert "| field | | meaning |" in section, "no '| field | | meaning |' table"
    table = section.split("| field | | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.strip().splitlines()[1:]:
        match = re.match(r"^\| `([a-z_0-9]+)` \|([^|]*)\|", line)
        assert match, f"not a field row: {line}"
        rows[match.group(1)] = match.group(2)
    return rows


def json_examples(section: str) -> list[str]:
    return re.findall(r"```json\n(.*?)```", section, flags=re.S)


def test_every_kind_has_a_subsection_and_no_stale_ones():
    sections = kind_sections()
    assert sorted(sections) == sorted(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_states_its_priority(kind):
    section = kind_sections()[kind]
    match = re.search(r"^Priority (\d)\.", section.strip(), flags=re.M)
    assert match, f"docs/records.md {kind}: no 'Priority N.' sentence"
    assert int(match.group(1)) == KINDS[kind].priority


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_table_marks_exactly_the_required_and_personal_fields(kind):
    rows = field_rows(kind_sections()[kind])
    required = {name for name, marks in rows.items() if "required" in marks}
    personal = {name for name, marks in rows.items() if "*personal*" in marks}
    assert required == set(KINDS[kind].required), f"{kind}: required fields in docs differ from KINDS"
    assert personal == set(KINDS[kind].personal), f"{kind}: personal fields in docs differ from KINDS"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_example_parses_and_makes_a_valid_record(kind):
    section = kind_sections()[kind]
    examples = json_examples(section)
    assert len(examples) == 1, f"{kind}: expected one json example, found {len(examples)}"
    data = json.loads(examples[0])
    record = new_record(kind, data, device_id="21010200001340000001", site="ln-sy-bank-012")
    assert record.kind == kind and record.data == data
    documented = set(field_rows(section))
    undocumented = set(data) - documented
    assert not undocumented, f"{kind}: example uses fields the table does not list: {undocumented}"


def test_example_id_numbers_pass_their_check_character():
    from agent.identity import is_valid_id_number
    text = (DOCS / "records.md").read_text(encoding="utf-8")
    numbers = set(re.findall(r'"id_number": "(\d{17}[\dX])"', text))
    assert numbers, "no full ID number in the examples"
    assert all(is_valid_id_number(n) for n in numbers), numbers


def test_plate_example_codes_agree_with_platecodes():
    from agent.platecodes import gat1400_codes, is_valid
    data = json.loads(json_examples(kind_sections()["plate_read"])[0])
    codes = gat1400_codes(data["plate_no"], data["plate_color_name"])
    assert is_valid(data["plate_no"]) and data["valid"]
    assert (data["plate_color"], data["plate_class"], data["plate_kind"]) == \
        (codes["plate_color"], codes["plate_class"], codes["kind"])
    assert len(data["motor_vehicle"]["MotorVehicleID"]) == 48


# --- config.md --------------------------------------------------------------------

def schema_keys(spec=configmod.SCHEMA, prefix="") -> dict[str, set[str]]:
    """TOML table header ('[device]', '[[lanes]]', '[lanes.barrier]') -> its keys."""
    out: dict[str, set[str]] = {}
    for name, sub in spec.fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(sub, configmod.Value):
            out.setdefault(f"[{prefix}]" if prefix in _plain_tables() else f"[[{prefix}]]", set()).add(name)
        elif isinstance(sub, configmod.Table):
            out.update(schema_keys(sub, key))
        else:
            out.update(schema_keys(sub.item, key))
    return out


def _plain_tables(spec=configmod.SCHEMA, prefix="") -> set[str]:
    tables = set()
    for name, sub in spec.fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(sub, configmod.Table):
            tables |= {key} | _plain_tables(sub, key)
        elif isinstance(sub, configmod.TableList):
            tables |= _plain_tables(sub.item, key)
    return tables


def documented_keys() -> dict[str, set[str]]:
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    out: dict[str, set[str]] = {}
    for header, body in zip(*[iter(re.split(r"^### `(\[\[?[a-z_.]+\]\]?)`\s*$", text, flags=re.M)[1:])] * 2):
        out[header] = set(re.findall(r"^\| `([a-z_0-9]+)` \|", body, flags=re.M))
    return out


def test_config_doc_lists_every_key_of_the_schema_under_its_table():
    expected = schema_keys()
    assert "[[lanes]]" in expected and "[lanes.barrier]" in expected and "[storage.retention]" in expected
    assert documented_keys() == expected


def test_config_doc_is_the_schema_reference_after_its_introduction():
    text = (DOCS / "config.md").read_text(encoding="utf-8")
    marker = configmod.REFERENCE_MARKER
    assert marker in text, f"docs/config.md lacks the line {marker!r}"
    generated = text.split(marker, 1)[1].lstrip("\n")
    assert generated == configmod.reference(), f"docs/config.md is stale; regenerate with:\n{REGENERATE}"


def test_reference_shows_defaults_required_keys_and_secret_files():
    ref = configmod.reference()
    assert '| `timezone` | a string | `"Asia/Shanghai"` |' in ref
    assert "| `id` | a string | *required* |" in ref
    assert re.search(r"\| `key_file` \|[^\n]*keys/data.key[^\n]*secret file", ref)
    assert "| `direction` | one of 'in', 'out', 'both' | `\"in\"` |" in ref


# --- links ------------------------------------------------------------------------

def linked_docs(path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    return set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", text))


def test_every_doc_the_readme_links_to_exists():
    links = linked_docs(ROOT / "README.md")
    assert {"docs/records.md", "docs/config.md", "docs/vision.md"} <= links
    missing = sorted(link for link in links if not (ROOT / link).is_file())
    assert not missing, f"README links to missing docs: {missing}"


def test_vision_doc_names_only_real_config_keys():
    text = (DOCS / "vision.md").read_text(encoding="utf-8")
    sections = set(configmod.SCHEMA.fields)
    keys = {k for k in re.findall(r"`([a-z_]+(?:\[\])?(?:\.[a-z_0-9]+)+)`", text)
            if k.split(".")[0].removesuffix("[]") in sections}
    assert keys, "docs/vision.md names no config key"
    for key in keys:
        spec = configmod.SCHEMA
        for part in key.replace("[]", "").split("."):
            spec = spec.item if isinstance(spec, configmod.TableList) else spec
            assert isinstance(spec, configmod.Table) and part in spec.fields, f"docs/vision.md: no key {key}"
            spec = spec.fields[part]
