"""The game-side config sections: the game (`env`), how an agent acts on it (`inputs`), the
`rayapp arcade` window (`arcade`) and the live player (`play`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rayapp.config.fields import opt

__all__ = ["EnvConfig", "InputsConfig", "ArcadeConfig", "PlayConfig"]


@dataclass
class EnvConfig:
    """The game an agent plays: the ALE emulator (`backend: atari`, the default) or a real game on
    the screen (`backend: screen`: rayapp.envs.screen.ScreenEnv, acting through `inputs.*`)."""

    backend: Literal["atari", "screen"] = opt(
        "atari",
        "where frames come from: the ALE emulator, or the screen (capture with mss, act through inputs.*, reward from env.reward)",
    )
    game: str = opt(
        "Breakout",
        "ALE game name (Breakout, Pong, ...) or a full gymnasium id such as 'ALE/Pong-v5'; screen: the game's name in datasets",
    )
    frameskip: int = opt(4, "emulator frames per step (the action repeats); 4 is the ALE v5 default")
    sticky_actions: float = opt(
        0.25, "probability the emulator repeats the previous action (ALE v5 default 0.25)"
    )
    max_episode_steps: int = opt(
        27000, "steps before an episode is truncated (27,000 steps = 108,000 frames, the usual cap)"
    )
    full_action_space: bool = opt(False, "use all 18 Atari actions instead of the game's minimal set")
    # ---- the screen backend (ScreenEnv); the emulator ignores these ------------------------------
    fps: float = opt(
        0.0,
        "screen: steps per second, each step exactly one frame period; 0: 60 / env.frameskip, the step rate "
        "of the Atari path's recordings (15 at frameskip 4)",
    )
    capture: Literal["monitor", "region", "window"] = opt(
        "monitor",
        "screen: what is captured: a whole monitor (env.monitor), a region (env.region) or a window (env.window_title)",
    )
    monitor: int = opt(1, "capture=monitor: mss monitor number (1: the first; 0: all monitors as one)")
    region: list[int] = opt(
        [],
        "capture=region: [left, top, width, height] in screen pixels (the part off the screen reads black)",
    )
    window_title: str = opt(
        "",
        "capture=window: the window's title, whole or a part that only it has (X11: WM_NAME / _NET_WM_NAME), "
        "e.g. 'rayapp arcade: Breakout'",
    )
    frame_size: list[int] = opt(
        [0, 0],
        "screen: [height, width] the capture is area-resized to before data.* preprocessing, so data.crop is in "
        "the same pixels as the recordings ([210, 160] for the arcade window); [0, 0] keeps the captured size",
    )
    display: str = opt("", "screen: the X display to capture and act on (empty: $DISPLAY)")
    focus: bool = opt(
        True, "capture=window: give the window the keyboard focus at every reset (X11 SetInputFocus)"
    )
    reward: Literal["none", "screen_score", "game_api"] = opt(
        "none",
        "screen: where rewards come from: none (reward 0), screen_score (the change of the score read from "
        "env.score_region with digit templates from `rayapp calibrate-score`), or game_api (a game mod's JSON "
        "lines over TCP at env.game_api_address: reward, done and extras)",
    )
    score_region: list[int] = opt(
        [],
        "screen_score: [left, top, width, height] of the score digits in the captured frame's pixels (after env.frame_size)",
    )
    score_templates: str = opt(
        "",
        "screen_score: path of the digit templates `rayapp calibrate-score` wrote; empty: <config-stem>.score.npz next to --config",
        path=True,
    )
    score_max_distance: float = opt(
        0.15,
        "screen_score: a glyph is a digit when at most this fraction of its pixels differ from the digit's template",
    )
    game_api_address: str = opt(
        "127.0.0.1:7777",
        "game_api: host:port where the game mod serves JSON lines (rayapp.envs.screen.game_api)",
    )
    game_api_timeout_s: float = opt(
        2.0, "game_api: seconds to wait for the connection and for each answer before the step fails"
    )
    game_over_template: str = opt(
        "",
        "screen: path of a PNG of what env.game_over_region shows at game over; the episode ends when it appears (empty: off)",
        path=True,
    )
    game_over_region: list[int] = opt(
        [],
        "screen: [left, top, width, height] in the captured frame's pixels compared with env.game_over_template",
    )
    game_over_threshold: float = opt(
        0.9,
        "screen: the normalised correlation (-1..1) with env.game_over_template at which the episode ends",
    )
    time_limit_s: float = opt(0.0, "screen: seconds after a reset at which an episode is truncated (0: off)")


@dataclass
class InputsConfig:
    """How an agent acts on a real game (rayapp.envs.inputs); the Atari path ignores it."""

    backend: Literal["none", "keyboard", "mouse", "gamepad"] = opt(
        "none",
        "the input backend of a screen env: keyboard (XTEST / SendInput), mouse, or gamepad (vgamepad)",
    )
    keys: dict = opt(
        {},
        "keyboard: action name -> keys held for the whole step, numbered in this order, e.g. "
        "{NOOP: [], LEFT: [a], FIRE+RIGHT: [space, d]} (names: rayapp.envs.inputs.KEYS); `rayapp arcade` reads "
        "the same mapping (action names: the game's, e.g. FIRE, LEFTFIRE; empty: arrows for directions, space for FIRE)",
    )
    mouse_commands: list[str] = opt(
        ["none", "move", "left_click", "right_click"],
        "mouse: the command head (none, move, left_click, right_click, middle_click, left_hold, right_hold, scroll_up, scroll_down)",
    )
    mouse_grid: list[int] = opt(
        [16, 9],
        "mouse: [cols, rows] of the x and y heads over the capture region (cells are aimed at their centre)",
    )
    gamepad: Literal["x360", "ds4"] = opt("x360", "gamepad: the virtual pad, Xbox 360 or DualShock 4")
    gamepad_actions: dict = opt(
        {},
        "gamepad, discrete: action name -> controls, e.g. {NOOP: {}, GAS: {right_trigger: 1}, LEFT: {left_stick: [-1, 0]}, JUMP: {buttons: [a]}}",
    )
    gamepad_heads: dict = opt(
        {},
        "gamepad, factorised: head -> its choices, e.g. {steer: [{left_x: -1}, {}, {left_x: 1}], fire: [{}, {buttons: [a]}]}",
    )
    dead_zones: dict = opt(
        {},
        "gamepad: the game's dead zone per axis (left_stick, right_stick, left_trigger, right_trigger: {inner, outer, "
        "mode: radial|axial}); outputs are sent past it; unset: XInput's (sticks 0.24 / 0.27 radial, triggers 30/255)",
    )


@dataclass
class ArcadeConfig:
    """`rayapp arcade`: an ALE game (env.game) in a window, played with the keyboard (inputs.keys)."""

    scale: int = opt(3, "window pixels per emulator pixel (3: a 480x630 window for Atari's 160x210 frames)")
    fps: float = opt(
        60.0, "emulator frames per second: the Atari's own rate (NTSC, 60); the game runs at frameskip 1"
    )
    sticky_actions: float = opt(
        0.0, "probability the emulator repeats the previous frame's action (0: a person's keys act at once)"
    )
    frames: int = opt(
        0, "stop after this many frames (0: until the window is closed, Escape, Ctrl+C or SIGTERM)"
    )
    game_api: str = opt(
        "",
        "host:port where the arcade serves the game-API protocol (the emulator's reward, done, score, lives) "
        "for env.reward=game_api, as a game mod would; empty: none",
    )


@dataclass
class PlayConfig:
    """`rayapp play`: a trained policy drives the game live (capture -> preprocess -> inference ->
    input), picking up newer weights from the checkpoint location while it plays."""

    fps: float | None = opt(
        None, "steps per second; null: the env's own rate (env.fps on the screen, 15 on the emulator); 0: as fast as it can"
    )
    mode: Literal["greedy", "sampled"] = opt(
        "greedy", "greedy: argmax; sampled: a BC policy's softmax, a Q-network epsilon-greedy at eval.q_epsilon"
    )
    epsilon: float = opt(0.0, "greedy: a random action at this probability")
    follow: Literal["best", "latest"] = opt(
        "best",
        "a run folder: follow <stage>/best.json (the trainer's chosen policy) or <stage>/latest.json (every policy it exports)",
    )
    reload_poll_s: float = opt(2.0, "seconds between two looks at the checkpoint location for newer weights (0: never)")
    kill_switch: str = opt(
        "f12", "key that releases every input and pauses, read globally (X server / OS, not the game window); again resumes; empty: none"
    )
    steps: int = opt(0, "stop after this many steps (0: no limit)")
    episodes: int = opt(0, "stop after this many episodes (0: no limit; Ctrl+C, SIGTERM or closing the window stop it)")
    window: bool = opt(True, "atari: show the emulator's frames in a window while it plays (false: headless)")
    scale: int = opt(3, "atari window: pixels per emulator pixel")
    console_every_s: float = opt(0.5, "seconds between two console lines (FPS, PPS, latency, outputs, inputs)")
    record: str = opt(
        "", "write what is played to this dataset (the replay contract; local or s3://); empty: nothing", path=True
    )
    video: str = opt("", "path (local or s3://) of a .gif or .mp4 of the first play.video_steps frames; empty: none", path=True)
    video_steps: int = opt(300, "frames in the --video clip")
