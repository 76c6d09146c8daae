"""benchmarks/beat_teacher.py's statistics and bookkeeping: the interquartile mean, per-arm
summaries (SE over seeds, or over episodes for one seed), human-normalised scores with Dopamine's
constants, the comparison against teacher and BC, and the tag that keeps runs of different configs
apart."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from beat_teacher import HUMAN_RANDOM, Results, compare, config_tag, iqm, report_fingerprints, summarise  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_iqm_is_the_mean_of_the_middle_half():
    x = [100.0, 1, 2, 3, 4, 5, 6, -50]  # 8 values: drop 2 at each end
    assert iqm(x) == pytest.approx(np.mean([2, 3, 4, 5]))
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (4, 9, 30, 90):
        y = rng.normal(size=n)
        assert iqm(y) == pytest.approx(stats.trim_mean(y, 0.25))


def test_summary_uses_seed_means_and_human_normalises():
    runs = [[10.0, 20.0], [30.0, 50.0], [16.1, 16.1]]  # seed means 15, 40, 16.1
    s = summarise(runs, "breakout")
    assert s["mean"] == pytest.approx(np.mean([15, 40, 16.1]), abs=0.01)
    assert s["se"] == pytest.approx(np.std([15, 40, 16.1], ddof=1) / np.sqrt(3), abs=0.01)
    assert (s["seeds"], s["episodes"]) == (3, 6)
    human, rand = HUMAN_RANDOM["breakout"]
    assert summarise([[human]], "breakout")["human_normalised"] == pytest.approx(1.0)
    assert summarise([[rand, rand]], "breakout")["human_normalised"] == pytest.approx(0.0)
    assert summarise([[-20.7, -20.7]], "pong")["human_normalised"] == pytest.approx(0.0)
    one = summarise([[1.0, 3.0, 5.0]], "pong")  # one seed: SE over its episodes
    assert one["se"] == pytest.approx(np.std([1, 3, 5], ddof=1) / np.sqrt(3), abs=0.01)


def test_comparison_with_teacher_and_bc_works_for_negative_scores():
    arms = {"teacher": {"mean": -11.0, "se": 1.0}, "bc": {"mean": -15.0, "se": 3.0}, "dqfd": {"mean": -9.0, "se": 4.0}}
    c = compare("pong", arms)
    assert c["score_vs_teacher_pong"] == pytest.approx(2.0) and c["beats_teacher_pong"]
    assert c["gain_vs_bc_pong"] == pytest.approx(6.0)
    assert c["gain_vs_bc_se_pong"] == pytest.approx(6.0 / 5.0)  # SE of the difference: hypot(4, 3)
    worse = compare("breakout", {"teacher": {"mean": 58.0, "se": 5.0}, "dqfd": {"mean": 50.0, "se": 2.0}})
    assert not worse["beats_teacher_breakout"] and "gain_vs_bc_breakout" not in worse
    # the runs' last policies, beside the chosen ones: their own keys
    final = compare("breakout", {**arms, "dqfd_final": {"mean": -5.0, "se": 0.0}})
    assert final["gain_vs_bc_se_final_breakout"] == pytest.approx(3.33) and final["beats_teacher_final_breakout"]
    assert final["gain_vs_bc_se_breakout"] == pytest.approx(6.0 / 5.0)


def test_config_tag_follows_learning_settings_not_paths(tmp_path):
    from rayapp.config import load_config

    path = os.path.join(ROOT, "configs", "beat-teacher-breakout.yaml")
    base = config_tag(load_config(path, []))
    assert config_tag(load_config(path, [f"run.dir={tmp_path}", "finetune.init_checkpoint=elsewhere"])) == base
    assert config_tag(load_config(path, ["finetune.lr=1.0e-4"])) != base
    assert config_tag(load_config(path, ["env.game=Pong"])) != base
    # which policy best.json names changes no training: the run files hold both policies' scores
    assert config_tag(load_config(path, ["finetune.select=final"])) == base


def test_a_config_key_added_at_its_default_keeps_the_recorded_results_valid():
    """Keys added to `finetune` after results were recorded must not orphan them: the Pong
    recipe without the Q calibration (how its committed runs were made) has the tag its result
    files carry (it changed when `finetune.life_loss_terminal` and the Q calibration keys were
    added, before ADDED_LATER)."""
    from rayapp.config import load_config

    path = os.path.join(ROOT, "configs", "beat-teacher-pong.yaml")
    tag = config_tag(load_config(path, ["finetune.init_action_gap=0", "finetune.init_value_from_returns=false"]))
    files = os.listdir(os.path.join(ROOT, "benchmarks", "results", "beat_teacher"))
    assert any(f.startswith(f"pong-dqfd-{tag}-") for f in files), (tag, sorted(files))
    assert config_tag(load_config(path, [])) != tag  # a key away from its default is a new recipe


def test_report_reads_one_bc_or_pools_them_all(tmp_path):
    r = Results(str(tmp_path / "res"))
    for name in ("breakout-bc-t1-bcaaa-30ep", "breakout-dqfd-t1-bcaaa-100steps-30ep-seed0",
                 "breakout-bc-t1-bcbbb-30ep", "breakout-dqfd-t1-bcbbb-100steps-30ep-seed0",
                 "breakout-dqfd-t1-bcbbb-100steps-30ep-seed1", "breakout-bc-t2-bcccc-30ep", "pong-bc-t1-bcddd-30ep"):  # fmt: skip
        r.put(name, {"scores": [1.0]})
    assert report_fingerprints(r, "breakout", "t1", 30, None) == ["bbb"]  # the most runs
    assert report_fingerprints(r, "breakout", "t1", 30, "all") == ["aaa", "bbb"]  # this config's only
    assert report_fingerprints(r, "breakout", "t1", 30, "a") == ["aaa"]
    with pytest.raises(SystemExit, match="no results for breakout with config tag t1 and BC zzz"):
        report_fingerprints(r, "breakout", "t1", 30, "zzz")


def test_results_are_written_whole_and_read_back(tmp_path):
    r = Results(str(tmp_path / "res"))
    assert r.get("x") is None
    r.put("x", {"scores": [1.0, 2.0]})
    assert r.get("x") == {"scores": [1.0, 2.0]}
    assert sorted(os.listdir(tmp_path / "res")) == ["x.json"]  # no .tmp left behind


@pytest.mark.parametrize("game", sorted(HUMAN_RANDOM))
def test_each_games_sweep_is_valid_and_a_trial_fits_two_cpus(game):
    from rayapp.config import load_config
    from rayapp.rl.dqn_config import resource_bundles
    from rayapp.tune.sweep import search_space

    cfg = load_config(os.path.join(ROOT, "configs", f"beat-teacher-{game}.yaml"), [])
    assert cfg.sweep.stage == "finetune"
    levers = {"lr", "n_step", "target_update_steps", "margin_weight", "demo_ratio", "updates_per_env_step", "epsilon"}
    space = search_space(cfg)
    assert {k.split(".", 1)[1] for k in space} == levers
    assert sum(b.get("CPU", 0) for b in resource_bundles(cfg, cfg.sweep.trial_cpus)) <= 2
    assert cfg.env.game.lower() == game and cfg.finetune.online_steps == 100_000
