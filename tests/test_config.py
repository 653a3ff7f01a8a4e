import tomllib

import pytest

from semtrack.config import Config, describe_config, load_config
from semtrack.errors import ConfigError


def test_defaults_are_documented_and_round_trip_through_toml(tmp_path):
    text = describe_config()
    for section in Config.model_fields:
        assert f"[{section}]" in text
        for name, info in type(getattr(Config(), section)).model_fields.items():
            assert info.description, f"{section}.{name} has no description"
    path = tmp_path / "semtrack.toml"
    path.write_text(text)
    assert load_config(path) == Config()
    tomllib.loads(text)


def test_file_values_and_overrides_are_applied(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[registration]\nmodel = "rigid"\n[track]\nmin_island_area_um2 = 0.5\n')
    cfg = load_config(path, {"registration": {"marker": (1, 2, 30, 40)}})
    assert cfg.registration.model == "rigid"
    assert cfg.registration.marker == (1, 2, 30, 40)
    assert cfg.track.min_island_area_um2 == 0.5
    assert cfg.segment.method == Config().segment.method


@pytest.mark.parametrize(
    "text, match",
    [
        ("[registration]\nmodle = 'rigid'\n", r"registration\.modle"),
        ("[registration]\nmodel = 'warp'\n", r"registration\.model"),
        ("[io]\npixel_size_um = -1\n", r"io\.pixel_size_um"),
        ("[nonsense]\nx = 1\n", "nonsense"),
        ("this is not toml", "not a valid TOML"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "bad.toml" in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")
