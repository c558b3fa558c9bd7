import pytest

from agent import config as configmod
from conftest import run_cli


def test_minimal_config_loads(config_file):
    cfg = configmod.load(config_file())
    assert cfg.device.id == "21010200001210000001"
    assert cfg.lanes[0].name == "in1"
    assert cfg.lanes[0].barrier.pin is None
    assert cfg.storage.retention.alarm == 180
    assert cfg.vision.engine == "opencv"


def test_example_is_valid_and_commented():
    text = configmod.example()
    cfg = configmod.parse(text, check_files=False)
    assert cfg.lanes[0].barrier.pin == 17
    assert cfg.alarm.buttons[0].location == "gatehouse desk"
    assert text.count("#") > 50


def test_typo_key_is_named(config_file):
    path = config_file("[vision]\nengnie = 'opencv'\n")
    with pytest.raises(configmod.ConfigError) as exc:
        configmod.load(path)
    assert "vision.engnie: unknown key" in str(exc.value)
    assert "engine" in str(exc.value)


@pytest.mark.parametrize("extra, expected", [
    ("[vision]\nengine = 'tesseract'\n", "vision.engine = 'tesseract': expected one of 'opencv', 'easyocr'"),
    ("[vision]\nworkers = 'four'\n", "vision.workers = 'four': expected an integer"),
    ("[storage.retention]\nalarm = 0\n", "storage.retention.alarm = 0: expected an integer from 1 to 3650"),
    ("[decisions]\nfuzzy_allow = 1\n", "decisions.fuzzy_allow = 1: expected true or false"),
])
def test_wrong_values_name_key_value_and_allowed(config_file, extra, expected):
    with pytest.raises(configmod.ConfigError) as exc:
        configmod.load(config_file(extra))
    assert expected in str(exc.value)


def test_bad_device_id(config_file, tmp_path):
    path = config_file()
    path.write_text(path.read_text().replace("21010200001210000001", "2101020000999"))
    with pytest.raises(configmod.ConfigError, match="device.id = '2101020000999': expected 20 digits"):
        configmod.load(path)
    path.write_text(path.read_text().replace("2101020000999", "21010200009990000001"))
    with pytest.raises(configmod.ConfigError, match="type digits 11-13 are '999'"):
        configmod.load(path)


def test_two_devices_on_one_pin(config_file):
    extra = "[[alarm.buttons]]\nname='b1'\nlocation='desk'\npin=17\n[alarm.siren]\npin=17\n"
    with pytest.raises(configmod.ConfigError, match=r"alarm.siren.pin = 17: already used by alarm.buttons\[0\]"):
        configmod.load(config_file(extra))


def test_presence_trigger_needs_a_presence_input(config_file, tmp_path):
    path = config_file()
    text = path.read_text().replace('name = "in1"\n', f'name = "in1"\ncamera = "{tmp_path}"\ntrigger = "presence"\n')
    path.write_text(text)
    with pytest.raises(configmod.ConfigError, match=r"lanes\[0\].trigger = 'presence': lane 'in1' has no presence input"):
        configmod.load(path)
    path.write_text(text.replace('trigger = "presence"\n', 'trigger = "presence"\npresence = { pin = 27 }\n'))
    assert configmod.load(path).lanes[0].presence.pin == 27


def test_plaintext_needs_explicit_permission(config_file):
    path = config_file()
    path.write_text(path.read_text().replace("allow_plaintext = true", ""))
    with pytest.raises(configmod.ConfigError, match="allow_plaintext"):
        configmod.load(path)


def test_missing_key_file_is_named(config_file, data_key):
    path = config_file()
    data_key.unlink()
    with pytest.raises(configmod.ConfigError, match="privacy.key_file = .*file not found"):
        configmod.load(path)


def test_several_problems_reported_together(config_file):
    with pytest.raises(configmod.ConfigError) as exc:
        configmod.load(config_file("[vision]\nengine = 'x'\nworkers = -1\n"))
    assert len(exc.value.problems) == 2


@pytest.mark.parametrize("content, expected", [
    (None, "config file not found"),
    ("[device\n", "not valid TOML"),
    ("[device]\nid = 5\n", "device.id = 5: expected a string"),
    ("[device]\nid = '21010200001210000001'\nsite = 's'\n[[lanes]]\nname = 'a'\nspeed = 3\n",
     "lanes[0].speed: unknown key"),
])
def test_cli_config_errors_one_line_exit_2(tmp_path, content, expected):
    path = tmp_path / "c.toml"
    if content is not None:
        path.write_text(content)
    result = run_cli("config", "check", path)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_config_check_ok(config_file):
    result = run_cli("config", "check", config_file())
    assert result.returncode == 0, result.stderr
    assert "ok: device 21010200001210000001" in result.stdout


def test_cli_example_roundtrip(tmp_path):
    result = run_cli("config", "example")
    path = tmp_path / "example.toml"
    path.write_text(result.stdout)
    checked = run_cli("config", "check", "--no-files", path)
    assert checked.returncode == 0, checked.stderr
