"""Settings file: load/save, validation with key and reason, CLI overrides, `anechat config ...`."""

import argparse
import json

import pytest
import yaml

from anechat.cli import chat_parser, main
from anechat.config import ConfigError, Settings
from anechat.errors import UsageError
from anechat.paths import config_file
from anechat.settings import SCHEMA


def write(text: str) -> None:
    config_file().parent.mkdir(parents=True, exist_ok=True)
    config_file().write_text(text, encoding="utf-8")


def test_missing_or_empty_file_means_defaults():
    assert Settings.load() == Settings()
    write("# nothing yet\n")
    assert Settings.load() == Settings()


def test_save_and_load_round_trip_unicode():
    s = Settings(default_model="smollm2-135m", system_prompt="Réponds brièvement. 🐍\nDeux lignes.",
                 theme="gruvbox", temperature=0.3, top_p=0.9, top_k=40, min_p=0.05, repeat_penalty=1.1,
                 seed=7, max_tokens=256)
    path = s.save()
    assert path == config_file()
    assert Settings.load() == s
    assert yaml.safe_load(path.read_text(encoding="utf-8"))["system_prompt"] == s.system_prompt
    assert s.sampling() == {"temperature": 0.3, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
                            "repeat_penalty": 1.1, "seed": 7, "max_tokens": 256}


def test_only_set_keys_are_written():
    Settings(temperature=0).save()
    assert yaml.safe_load(config_file().read_text()) == {"temperature": 0.0}


def test_integer_in_a_float_key_is_accepted_as_float():
    write("temperature: 1\n")
    assert Settings.load().temperature == 1.0 and isinstance(Settings.load().temperature, float)


@pytest.mark.parametrize("text, message", [
    ("temperature: -0.5\n", "temperature: must be in [0, 10] (0 = greedy) (got -0.5)"),
    ("top_p: 0\n", "top_p: must be in (0, 1] (got 0.0)"),
    ("top_k: 2.5\n", "top_k: must be an integer (got 2.5)"),
    ("min_p: 1\n", "min_p: must be in [0, 1) (got 1.0)"),
    ("repeat_penalty: 0\n", "repeat_penalty: must be > 0 (1 = off) (got 0.0)"),
    ("seed: -1\n", "seed: must be in [0, 2**32) (got -1)"),
    ("max_tokens: 0\n", "max_tokens: must be ≥ 1 (got 0)"),
    ("max_tokens: yes\n", "max_tokens: must be an integer (got True)"),
    ("temperature: hot\n", "temperature: must be a number (got 'hot')"),
    ("theme: Dark Mode\n", "theme: must be a theme name"),
    ("default_model: '  '\n", "default_model: must not be empty"),
    ("system_prompt: 12\n", "system_prompt: must be text (got 12)"),
    ("temprature: 0.5\n", "temprature: unknown key (known: default_model,"),
    ("- a\n- b\n", "expected `key: value` lines, found a list"),
    ("temperature: [\n", "not valid YAML (line 2)"),
])
def test_invalid_file_values_name_the_file_key_and_reason(text, message):
    write(text)
    with pytest.raises(ConfigError) as e:
        Settings.load()
    assert str(e.value).startswith(f"{config_file()}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_cli_flags_override_the_file():
    Settings(default_model="file-model", system_prompt="from file", temperature=0.9, top_k=40).save()
    args = chat_parser().parse_args(["-m", "flag-model", "--temperature", "0", "--top-p", "0.5"])
    merged = Settings.load().merged(args)
    assert merged == Settings(default_model="flag-model", system_prompt="from file", temperature=0.0,
                              top_k=40, top_p=0.5)
    assert Settings.load().merged(chat_parser().parse_args([])) == Settings.load()


def test_invalid_cli_values_are_rejected_with_the_flag():
    with pytest.raises(UsageError, match=r"^--top-p: must be in \(0, 1\] \(got 1.5\)$"):
        Settings().merged(argparse.Namespace(top_p=1.5))
    with pytest.raises(UsageError, match=r"^--model: must not be empty"):
        Settings().merged({"model": " "})


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_config_commands(capsys):
    code, out, _ = run(capsys, "config", "path")
    assert (code, out) == (0, f"{config_file()}\n")
    assert run(capsys, "config", "set", "temperature", "0.25")[0] == 0
    assert run(capsys, "config", "set", "system_prompt", "Sois bref ✓")[0] == 0
    assert run(capsys, "config", "set", "top_k", "50")[0] == 0
    assert Settings.load() == Settings(system_prompt="Sois bref ✓", temperature=0.25, top_k=50)
    code, out, _ = run(capsys, "config", "show")
    shown = yaml.safe_load(out)
    # Effective values (issue 13): the theme in force is the default one, not null.
    # Issue 17: a setting nothing sets is a comment saying so, not a null.
    assert list(shown) == [k for k in SCHEMA if k != "seed"] and "# seed: none" in out
    assert shown["temperature"] == 0.25 and shown["theme"] == "ane-dark"
    assert run(capsys, "config", "unset", "top_k")[0] == 0
    assert Settings.load().top_k is None


def test_config_set_rejects_bad_values_and_keeps_the_file(capsys):
    run(capsys, "config", "set", "top_p", "0.8")
    before = config_file().read_bytes()
    code, _, err = run(capsys, "config", "set", "top_p", "1.5")
    assert code == 2 and err == "anechat: config: top_p: must be in (0, 1] (got 1.5)\n"
    code, _, err = run(capsys, "config", "set", "seed", "1e3")
    assert code == 2 and err == "anechat: config: seed: must be an integer (got '1e3')\n"
    with pytest.raises(SystemExit) as e:  # argparse rejects unknown keys itself
        main(["config", "set", "colour", "red"])
    assert e.value.code == 2 and "invalid choice: 'colour'" in capsys.readouterr().err
    assert config_file().read_bytes() == before


def test_broken_file_is_one_line_for_every_config_command(capsys):
    write("top_p: 7\n")
    for argv in (["config", "show"], ["config", "set", "temperature", "1"]):
        code, out, err = run(capsys, *argv)
        assert code == 1 and out == "" and err == f"anechat: {config_file()}: top_p: must be in (0, 1] (got 7.0)\n"


def test_config_show_prints_effective_values_and_their_origin(capsys):
    Settings(temperature=0.25, system_prompt="Sois bref").save()
    code, out, _ = run(capsys, "config", "show", "--top-k", "7")
    assert code == 0
    origins = {line.lstrip("# ").split(":")[0]: line.rsplit("# ", 1)[1] for line in out.splitlines()}
    # The default model's recommended sampling (the registry's, as it is not installed) sits under the file.
    assert origins == {"default_model": "registry", "system_prompt": "config file", "theme": "default",
                       "temperature": "config file", "top_p": "default", "top_k": "flag",
                       "min_p": "default", "repeat_penalty": "model smollm2-135m", "seed": "default",
                       "max_tokens": "default"}
    assert "null" not in out
    shown = yaml.safe_load(out)  # the origins are comments: the output still loads as the values
    assert shown == {"default_model": "smollm2-135m", "system_prompt": "Sois bref", "theme": "ane-dark",
                     "temperature": 0.25, "top_p": 1.0, "top_k": 7, "min_p": 0.0, "repeat_penalty": 1.1,
                     "max_tokens": 512}
    code, out, _ = run(capsys, "config", "show", "--json", "-m", "other")
    assert json.loads(out)["default_model"] == {"value": "other", "origin": "flag"}
    code, _, err = run(capsys, "config", "show", "--seed", "-1")
    assert code == 2 and err == "anechat: --seed: must be in [0, 2**32) (got -1)\n"


def test_every_surface_takes_its_settings_from_the_schema():
    from anechat.chat.slash import REGISTRY
    from anechat.engine.sampling import SamplingParams
    from anechat.settings import SAMPLING_KEYS

    flags = {a.dest: a for a in chat_parser()._actions}
    for key, setting in SCHEMA.items():
        if setting.flags:
            assert flags[setting.dest].option_strings == list(setting.flags)
        if setting.sampling:
            assert getattr(SamplingParams(), key) == setting.default
            assert key in REGISTRY["set"].help
    assert set(SAMPLING_KEYS) < set(SamplingParams.__dataclass_fields__)
