"""What "sampled" play means for each kind of network, and the seed ranges of selection and
evaluation. No Ray: small checkpoints with known outputs, played by `Agent` and by
`play_episodes` on real Breakout."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import SMOKE

from rayapp.config import config_to_dict, load_config
from rayapp.envs.episodes import play_episodes
from rayapp.envs.seeds import episode_seeds, seed_purpose
from rayapp.errors import ConfigError
from rayapp.frames import FrameSpec
from rayapp.models import ModelSpec, build_model, save_policy
from rayapp.models.agent import Agent, mode_label

# constant outputs whatever the frame: argmax is action 0, its softmax gives it only 36%
OUTPUTS = torch.tensor([0.5, 0.2, 0.0, -0.3])
SOFTMAX = torch.softmax(OUTPUTS.double(), 0).numpy()


def constant_checkpoint(folder, stage: str, small: bool = False) -> tuple[str, FrameSpec]:
    """A Breakout-shaped network whose outputs are OUTPUTS for every input; meta stage "finetune"
    makes it a Q-network (what `rayapp finetune` exports), "pretrain" a BC policy. `small`: 36x36
    single frames (the smallest the Nature CNN takes), for many quick `Agent.act` calls."""
    cfg = load_config(SMOKE, [f"run.dir={folder}"])
    frames = FrameSpec.from_config(cfg.data)
    shape = (1, 36, 36) if small else frames.input_shape((210, 160, 3))
    spec = ModelSpec(shape, (("action", 4),), "cnn", 32)
    net = build_model(spec)
    with torch.no_grad():
        net.heads[0].weight.zero_()
        net.heads[0].bias.copy_(OUTPUTS)
    game = {"game": "breakout", "env_id": cfg.env.game, "obs_shape": [210, 160, 3],
            "actions": [["NOOP", "FIRE", "RIGHT", "LEFT"]], "frame_rate": 15.0}  # fmt: skip
    meta = {"stage": stage, "phase": "online", "env_steps": 100} if stage == "finetune" else {"stage": stage}
    name = f"{stage}-small" if small else stage
    path = save_policy(str(folder / name), net, spec, frames, game, config_to_dict(cfg), meta)
    return path, frames


def actions(agent: Agent, n: int) -> np.ndarray:
    obs = np.random.default_rng(1).integers(0, 255, (n, *agent.ckpt.spec.input_shape), dtype=np.uint8)
    return np.array([agent.act(o) for o in obs])


def test_sampled_q_network_is_epsilon_greedy_never_a_softmax(tmp_path):
    path, _ = constant_checkpoint(tmp_path, "finetune", small=True)
    # q_epsilon=0: exactly the greedy action, where a softmax over the Q-values picks it 36% of the time
    assert SOFTMAX[0] < 0.4
    greedy = actions(Agent(path, "sampled", seed=3, q_epsilon=0.0), 200)
    assert (greedy == 0).all()
    # q_epsilon=1: uniform over the actions (1,500 draws: each count within 4 sigma of 375; the
    # softmax would give action 0 about 535)
    counts = np.bincount(actions(Agent(path, "sampled", seed=3, q_epsilon=1.0), 1500), minlength=4)
    sigma = np.sqrt(1500 * 0.25 * 0.75)
    assert np.all(np.abs(counts - 375) < 4 * sigma), counts
    # the default, the usual Atari evaluation epsilon: greedy 95% + 5%/4 of the time
    a = actions(Agent(path, "sampled", seed=3), 1500)
    assert abs((a == 0).mean() - (0.95 + 0.05 / 4)) < 4 * np.sqrt(0.96 * 0.04 / 1500)
    assert mode_label(Agent(path).ckpt, "sampled", q_epsilon=0.001) == "sampled (epsilon-greedy 0.001)"


def test_sampled_bc_policy_samples_its_softmax(tmp_path):
    path, _ = constant_checkpoint(tmp_path, "pretrain", small=True)
    agent = Agent(path, "sampled", seed=3, q_epsilon=0.0)  # q_epsilon is for Q-networks only
    counts = np.bincount(actions(agent, 1500), minlength=4)
    sigma = np.sqrt(1500 * SOFTMAX * (1 - SOFTMAX))
    assert np.all(np.abs(counts - 1500 * SOFTMAX) < 4 * sigma), (counts, 1500 * SOFTMAX)
    assert agent.label == "sampled (softmax)"
    assert (actions(Agent(path, "greedy"), 50) == 0).all()


def test_evaluation_episodes_play_the_mode_of_the_network(tmp_path):
    """Through `play_episodes` (what `rayapp evaluate` runs in its tasks), on real Breakout."""
    cfg = load_config(SMOKE, [f"run.dir={tmp_path}", "env.max_episode_steps=80"])
    env_cfg = dataclasses.asdict(cfg.env)
    q, frames = constant_checkpoint(tmp_path, "finetune")
    bc, _ = constant_checkpoint(tmp_path, "pretrain")
    seeds = episode_seeds(0, "evaluation", 2)
    ep = play_episodes("policy", "sampled", seeds[:1], env_cfg, q, frames.to_json(), 0.0, 0, q_epsilon=0.0)[0]
    assert ep["seed"] == seeds[0] and ep["actions"][0] == ep["steps"] > 0  # greedy: NOOP every step
    ep = play_episodes("policy", "sampled", seeds[:1], env_cfg, bc, frames.to_json(), 0.0, 0, q_epsilon=0.0)[
        0
    ]
    assert ep["actions"][0] < ep["steps"]  # the softmax plays other actions too


def test_selection_and_evaluation_seeds_are_disjoint_ranges():
    for run_seed in (0, 1, 7, 123):
        ev = episode_seeds(run_seed, "evaluation", 1000)
        sel = episode_seeds(run_seed, "selection", 1000)
        assert not set(ev) & set(sel)
        assert {seed_purpose(s) for s in ev} == {"evaluation"} and {seed_purpose(s) for s in sel} == {
            "selection"
        }
    # across run seeds too: no run's selection seeds are another run's evaluation seeds
    assert not set(episode_seeds(0, "selection", 5000)) & set(episode_seeds(1, "evaluation", 5000))
    assert seed_purpose(3) is None  # a recording seed (run.seed * 10_000 + k)
    with pytest.raises(ConfigError, match="at most 100,000"):
        episode_seeds(0, "evaluation", 100_001)
    with pytest.raises(ConfigError, match="eval.q_epsilon"):
        load_config(SMOKE, ["eval.q_epsilon=2"])
    with pytest.raises(ConfigError):
        load_config(SMOKE, ["eval.q_epsilonn=0.1"])  # unknown keys are still refused
