import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayapp.config import (
    Config,
    config_from_dict,
    config_to_dict,
    describe_keys,
    dump_config,
    load_config,
    path_keys,
)
from rayapp.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_then_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("record:\n  episodes: 7\n  collectors: 3\nenv:\n  game: Pong\n")
    cfg = load_config(
        str(f),
        ["record.episodes=9", "data.uri=s3://replays/breakout", "env.sticky_actions=0", "ray.num_cpus=null"],
    )
    assert cfg.record.episodes == 9  # --set wins over the file
    assert cfg.record.collectors == 3  # the file wins over the default
    assert cfg.env.game == "Pong"
    assert cfg.env.sticky_actions == 0.0 and isinstance(cfg.env.sticky_actions, float)
    assert cfg.data.uri == "s3://replays/breakout"
    assert cfg.ray.num_cpus is None
    assert cfg.record.shard_mb == Config().record.shard_mb  # untouched default


def test_data_uri_defaults_under_run_dir():
    cfg = load_config(None, ["run.dir=runs/exp1"])
    assert cfg.data_uri == "runs/exp1/replays"
    assert load_config(None, ["run.dir=runs/exp1", "data.uri=/x/y"]).data_uri == "/x/y"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("record.episdes=3", "unknown config key 'record.episdes' (did you mean 'record.episodes'?)"),
        ("recrd.episodes=3", "unknown config key 'recrd'"),
        ("record.episodes=three", "config key 'record.episodes' expects int, got 'three'"),
        ("record.append=maybe", "config key 'record.append' expects bool"),
        (
            "record.policy=human",
            "config key 'record.policy' expects one of 'teacher', 'random', 'noisy_teacher'",
        ),
        ("record=3", "'record' is a section"),
        ("record.episodes", "expected section.key=value"),
        ("record.epsilon=1.5", "record.epsilon must be in [0, 1]"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert fragment in str(e.value)


def test_bad_file_keys_and_types_name_the_file_and_full_path(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("record:\n  shard_mb: lots\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: config key 'record.shard_mb' expects float, got 'lots'"
    ):
        load_config(str(f))
    f.write_text("env:\n  gmae: Pong\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'env.gmae' \(did you mean 'env.game'\?\)"):
        load_config(str(f))
    f.write_text("env: [1, 2]\n")
    with pytest.raises(ConfigError, match="'env' must be a mapping"):
        load_config(str(f))
    f.write_text("env: {game: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(f))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_resolved_config_round_trips():
    cfg = load_config(str(ROOT / "configs" / "smoke.yaml"), ["record.epsilon=0.3"])
    text = dump_config(cfg, "header")
    assert text.startswith("# header\n")
    again = config_from_dict(yaml.safe_load(text))
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_every_value_has_a_reason(path):
    load_config(str(path))
    for line in path.read_text().splitlines():
        s = line.strip()
        if s and not s.startswith("#") and not s.endswith(":"):
            assert "#" in s, f"{path.name}: '{s}' has no why-comment"


def test_every_key_is_documented():
    keys = describe_keys()
    assert len(keys) > 20
    assert all(help for _, _, _, help in keys)


def test_every_location_key_is_marked_as_a_path():
    """Sweeps make path-valued keys absolute before trials change folder (`path_keys`). Every
    string key is either marked `path=True` or declared here as naming no location, so a new one
    cannot be forgotten: adding a string key fails this test until it is classified."""
    # a cluster address, a game id, a metric name, an X display, a window title
    not_locations = {"ray.address", "env.game", "sweep.metric", "env.display", "env.window_title"}
    not_locations.add("env.game_api_address")  # a game mod's host:port
    not_locations.add("arcade.game_api")  # the host:port the arcade serves its game API at
    not_locations.add("play.kill_switch")  # a key name
    not_locations.add("video.game")  # the game an imported video shows (an ALE name or any title)
    strings = {key for key, tp, _, _ in describe_keys() if tp == "str"}
    paths = path_keys()
    assert not_locations <= strings, not_locations - strings  # the declared set is current
    assert set(paths) == strings - not_locations, {
        "unmarked": sorted(strings - not_locations - set(paths)),
        "marked but not a string": sorted(set(paths) - strings),
    }
    helps = {key: help for key, _, _, help in describe_keys()}
    for key in paths:  # what the help says agrees with the mark
        assert any(w in helps[key] for w in ("folder", "path", "URI", "s3://")), key
    assert paths["finetune.init_checkpoint"] == ("none",)  # 'none' means from scratch, not ./none


def test_cli_config_error_is_one_line_without_traceback():
    p = subprocess.run(
        [sys.executable, "-m", "rayapp.cli", "record", "--set", "record.episdes=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert "unknown config key 'record.episdes'" in err[0]
    assert "Traceback" not in p.stderr
