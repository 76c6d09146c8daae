"""Part 4 of benchmarks/screen.py: a BC policy plays the arcade window through ScreenEnv in real time.

The same policy (--bc-mode: sampled, its softmax, by default; greedy at the checkpoint config's
eval.epsilon; both are `rayapp evaluate`'s modes) plays N episodes

  (a) on the emulator, rayapp's own evaluation path (rayapp.envs.episodes.play_episodes, the
      evaluation seeds), with the arcade's emulator settings: ALE frameskip 4, sticky actions
      `arcade.sticky_actions` (0, not ALE v5's 0.25: the arcade's keys act at once), the same step cap;
  (b) through ScreenEnv against `rayapp arcade` in its window, in real time: configs/arcade-screen.yaml
      (env.fps 15, capture=window, the keyboard backend through XTEST). Reward and episode end come
      from the arcade's game API (`rayapp arcade --game-api`, env.reward=game_api): the emulator's
      own reward and game over, as a game mod would send them. The arcade truncates a game at
      `env.max_episode_steps` x 4 frames and ScreenEnv at `env.max_episode_steps` steps: the same
      game time as (a).

and a random policy plays (a)'s episodes on the emulator, for "far above random". Goal: screen mean
>= 0.5 x emulator mean, and above random.
"""

from __future__ import annotations

import time

import numpy as np

from rayapp.config import load_config
from rayapp.envs.episodes import play_episodes
from rayapp.envs.screen import ScreenEnv
from rayapp.envs.seeds import episode_seeds
from rayapp.models.agent import Agent, mode_label
from rayapp.models.checkpoint import load_policy, resolve_checkpoint

__all__ = ["bc_play", "mean_se"]


def mean_se(xs) -> tuple[float, float]:
    xs = np.asarray(xs, float)
    se = float(xs.std(ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else 0.0
    return round(float(xs.mean()), 3), round(se, 3)


def emulator_env(cfg, max_steps: int) -> dict:
    """The arcade's emulator settings as the Atari path's env config."""
    return {"game": cfg.env.game, "frameskip": 4, "sticky_actions": float(cfg.arcade.sticky_actions),
            "max_episode_steps": max_steps, "full_action_space": False}  # fmt: skip


def play_screen(
    cfg, checkpoint: str, episodes: int, mode: str, epsilon: float, seed: int, log=print
) -> list[dict]:
    """Episodes of the policy through ScreenEnv (cfg: arcade-screen.yaml with env.reward=game_api)."""
    env = ScreenEnv(cfg.env, cfg.inputs, load_policy(checkpoint).frames)
    agent = Agent(checkpoint, mode, epsilon, seed=seed)
    out = []
    try:
        for i in range(episodes):
            obs, _ = env.reset()
            agent.reset()
            score, steps, done, late, act_ms = 0.0, 0, False, [], []
            t0 = time.perf_counter()
            while not done:
                a0 = time.perf_counter()
                a = agent.act(obs)
                act_ms.append((time.perf_counter() - a0) * 1e3)
                obs, r, te, tr, info = env.step(a)
                score += r
                steps += 1
                late.append(info["late_ms"])
                done = te or tr
            wall = time.perf_counter() - t0
            out.append({"score": score, "steps": steps, "truncated": bool(tr and not te),
                        "arcade_score": info.get("score"), "late_ms_mean": float(np.mean(late)),
                        "late_ms_p99": float(np.percentile(late, 99)), "dropped_frames": int(info["dropped_frames"]),
                        "act_ms_mean": float(np.mean(act_ms)), "fps": steps / wall})  # fmt: skip
            e = out[-1]
            log(f"  screen episode {i + 1}/{episodes}: score {score:g} in {steps} steps"
                f"{' (truncated)' if e['truncated'] else ''}, late mean {e['late_ms_mean']:.2f} ms, "
                f"dropped {e['dropped_frames']}, {e['fps']:.2f} steps/s", flush=True)  # fmt: skip
    finally:
        env.close()
    return out


def bc_play(
    display: str,
    bc_run: str,
    episodes: int,
    max_steps: int,
    start_arcade,
    config: str,
    mode: str = "sampled",
    log=print,
) -> dict:
    """The part's numbers; `start_arcade(display, *args)` starts `rayapp arcade` and waits for its window."""
    import socket

    checkpoint = resolve_checkpoint(bc_run)
    ckpt = load_policy(checkpoint)
    epsilon = float(ckpt.config.get("eval", {}).get("epsilon", 0.0) or 0.0)
    run_seed = int(ckpt.config.get("run", {}).get("seed", 0) or 0)
    with socket.socket() as s:  # a free port for the arcade's game API
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    overrides = [f"env.display={display}", f"env.max_episode_steps={max_steps}", "env.reward=game_api",
                 f"env.game_api_address={address}"]  # fmt: skip
    cfg = load_config(config, overrides)
    seeds = episode_seeds(run_seed, "evaluation", episodes)
    env_cfg = emulator_env(cfg, max_steps)

    t0 = time.perf_counter()
    emu = play_episodes("policy", mode, seeds, env_cfg, checkpoint, ckpt.frames.to_json(), epsilon)
    log(f"  emulator: scores {[e['score'] for e in emu]}, steps {[e['steps'] for e in emu]} "
        f"({time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip
    rnd = play_episodes("random", "greedy", seeds, env_cfg, None, None, 0.0)
    log(f"  random on the emulator: scores {[e['score'] for e in rnd]}", flush=True)

    arcade = start_arcade(display, "--game-api", address, "--set", f"env.max_episode_steps={max_steps}",
                          "--set", f"arcade.sticky_actions={cfg.arcade.sticky_actions}")  # fmt: skip
    try:
        scr = play_screen(cfg, checkpoint, episodes, mode, epsilon, run_seed, log)
    finally:
        arcade.terminate()
        arcade.wait(timeout=30)
    (em, ese), (sm, sse), (rm, rse) = (mean_se([e["score"] for e in x]) for x in (emu, scr, rnd))
    ratio = round(sm / em, 3) if em else None
    return {
        "checkpoint": checkpoint, "mode": mode_label(ckpt, mode, epsilon), "episodes": episodes,
        "max_episode_steps": max_steps, "sticky_actions": float(cfg.arcade.sticky_actions),
        "emulator_mean": em, "emulator_se": ese, "emulator_steps_mean": float(np.mean([e["steps"] for e in emu])),
        "screen_mean": sm, "screen_se": sse, "screen_steps_mean": float(np.mean([e["steps"] for e in scr])),
        "screen_truncated": sum(e["truncated"] for e in scr),
        "screen_late_ms_mean": round(float(np.mean([e["late_ms_mean"] for e in scr])), 3),
        "screen_late_ms_p99_max": round(max(e["late_ms_p99"] for e in scr), 3),
        "screen_dropped_mean": float(np.mean([e["dropped_frames"] for e in scr])),
        "screen_act_ms_mean": round(float(np.mean([e["act_ms_mean"] for e in scr])), 3),
        "screen_fps_mean": round(float(np.mean([e["fps"] for e in scr])), 2),
        "random_mean": rm, "random_se": rse, "ratio": ratio,
        "screen_scores": [e["score"] for e in scr], "emulator_scores": [e["score"] for e in emu],
    }  # fmt: skip
