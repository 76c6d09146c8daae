"""Reward and episode end for the screen path (rayapp.envs.screen.rewards, digits, calibrate):
the score read from Atari Breakout's own digits, calibrated from a few labelled frames, against
the emulator's score (on emulator frames, and on a real arcade window captured under Xvfb through
a ScreenEnv acting with the keyboard); failed readings; game-over pictures. The game mod's API:
tests/test_game_api.py."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import held_keys

from rayapp.cli import main
from rayapp.config import load_config
from rayapp.envs.atari import make_atari_env
from rayapp.envs.screen.clock import Tick
from rayapp.envs.screen.digits import DigitTemplates, calibrate
from rayapp.envs.screen.rewards import GameOver, ScreenScore, make_reward_source
from rayapp.errors import ConfigError, ScoreCalibrationError

ROOT = Path(__file__).resolve().parent.parent
ARCADE_SCREEN = str(ROOT / "configs" / "arcade-screen.yaml")
REGION = [32, 3, 52, 14]  # Breakout's score: three digits at the top of the 210x160 frame


def breakout(seed: int = 0):
    env = make_atari_env(
        load_config(None).env, frameskip=1, repeat_action_probability=0.0, max_episode_steps=10**6
    )
    env.reset(seed=seed)
    return env


def set_score(env, score: int) -> None:
    """Breakout keeps its score in RAM as BCD (76: hundreds, 77: tens and ones); the screen shows
    it a few frames later."""
    ale = env.unwrapped.ale
    ale.setRAM(76, score // 100)
    ale.setRAM(77, (score // 10 % 10) * 16 + score % 10)


def shown(env, score: int) -> np.ndarray:
    env.reset(seed=0)
    set_score(env, score)
    for _ in range(3):
        frame, *_ = env.step(0)
    return frame


def tracking_action(frame: np.ndarray) -> int:
    """FIRE when no ball is in play, else move the paddle under the ball (NOOP, FIRE, RIGHT, LEFT)."""
    band = frame[189:193, 8:152].astype(int)
    paddle = np.nonzero(((band[..., 0] > 150) & (band[..., 1] < 100)).any(0))[0]
    ball = np.nonzero(frame[100:188, 8:152].any(2).any(0))[0]
    if not len(ball) or not len(paddle):
        return 1
    d = ball.mean() - paddle.mean()
    return 2 if d > 2 else 3 if d < -2 else 0


def labelled_frames(env) -> list[tuple[np.ndarray, int]]:
    return [(shown(env, s), s) for s in (0, 123, 456, 789)]  # every digit once or more


def test_the_screen_score_agrees_with_the_emulator_on_its_frames(capsys):
    env = breakout()
    try:
        t = calibrate(labelled_frames(env), REGION)
        assert t.known() == list(range(10))
        frame, _ = env.reset(seed=1)
        score, agree, lagged, n = 0.0, 0, 0, 0
        for i in range(6000):
            before = score
            frame, r, term, trunc, _ = env.step(tracking_action(frame))
            score += r
            assert not (term or trunc)
            if i % 5 == 0:
                value, err = t.read(frame, 0.15)
                assert err == "" and value is not None
                n += 1
                agree += value == score
                lagged += value in (score, before)  # the game draws a new score one frame late
    finally:
        env.close()
    with capsys.disabled():
        print(f"\n  screen score vs emulator score on {n} emulator frames (final score {score:g}): agreement "
              f"{agree / n:.4f}; with the game's one-frame drawing lag {lagged / n:.4f}")  # fmt: skip
    assert score >= 50 and agree / n >= 0.99 and lagged == n


def test_calibrate_score_writes_templates_next_to_the_config(tmp_path, capsys):
    env = breakout()
    try:
        specs = []
        for k, (frame, s) in enumerate(labelled_frames(env)):
            path = tmp_path / f"shot{k}.png"
            cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            specs += ["--frame", f"{path}={s}"]
        probe = shown(env, 507)
    finally:
        env.close()
    cfg = tmp_path / "mygame.yaml"
    cfg.write_text(f"env:\n  reward: screen_score\n  score_region: {REGION}\n")
    assert main(["calibrate-score", "--config", str(cfg), *specs]) == 0
    out = capsys.readouterr().out
    assert (
        "digits [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] from 4 labelled frame(s)" in out and "mygame.score.npz" in out
    )
    t = DigitTemplates.load(str(tmp_path / "mygame.score.npz"), REGION)
    assert t.read(probe, 0.15) == (507, "")
    # the other commands find the templates by the same rule
    assert main(["config", "--config", str(cfg)]) == 0
    assert f"score_templates: {tmp_path / 'mygame.score.npz'}" in capsys.readouterr().out


def test_an_unreadable_score_region_is_a_one_line_calibration_error(tmp_path, capsys):
    env = breakout()
    try:
        frames = labelled_frames(env)
    finally:
        env.close()
    for region, match in [
        (
            [20, 34, 40, 20],
            "shows one colour in every labelled frame",
        ),  # black: below the score, above the bricks
        ([32, 3, 20, 14], "holds 1 glyph\\(s\\), the score has 3 digit\\(s\\)"),  # one digit of three
        ([150, 200, 40, 40], "is not inside frame 1 \\(160x210 pixels\\)"),
    ]:
        with pytest.raises(ScoreCalibrationError, match=match) as e:
            calibrate(frames, region)
        assert "\n" not in str(e.value)
    with pytest.raises(ScoreCalibrationError, match="show the digits 1 and 2 as the same picture"):
        calibrate([(frames[1][0], 123), (frames[1][0], 223)], REGION)  # a wrong label
    # through the command: exit status 2 and one line
    png = tmp_path / "shot.png"
    cv2.imwrite(str(png), cv2.cvtColor(frames[1][0], cv2.COLOR_RGB2BGR))
    cfg = tmp_path / "g.yaml"
    cfg.write_text("env:\n  score_region: [20, 34, 40, 20]\n")
    assert main(["calibrate-score", "--config", str(cfg), "--frame", f"{png}=123"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "rayapp calibrate-score: error: env.score_region [20, 34, 40, 20]"
    )
    assert not (tmp_path / "g.score.npz").exists()


def test_failed_readings_are_reported_and_counted_not_zeroed(caplog):
    env = breakout()
    try:
        frames = labelled_frames(env)
        t = calibrate(frames, REGION)
        f5, f9 = shown(env, 5), shown(env, 9)
    finally:
        env.close()
    covered = f5.copy()
    covered[4:16, 50:66] = 255  # something drawn over the middle digit
    src = ScreenScore(t, 0.15)
    with caplog.at_level(logging.WARNING, logger="rayapp.envs.screen.rewards"):
        assert src.reset(f5) == {"score": 5.0, "reward_error": "", "reward_errors": 0}
        bad = [src.step(covered) for _ in range(3)]
        good = src.step(f9)
    for r in bad:
        assert r.reward == 0.0 and "matches no digit" in r.info["reward_error"]
    assert [r.info["reward_errors"] for r in bad] == [1, 2, 3]
    assert good.reward == 4.0 and good.info == {
        "score": 9.0,
        "reward_error": "",
        "reward_errors": 3,
    }  # paid late
    warnings = [r for r in caplog.records if "failed reading" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one per 10 s


def test_a_game_over_picture_ends_the_episode(tmp_path, capsys):
    env = breakout()
    try:
        over, play = shown(env, 123), shown(env, 120)
    finally:
        env.close()
    region = [64, 3, 20, 14]  # the ones digit: "3" stands in for a game-over picture
    left, top, w, h = region
    detector = GameOver(over[top : top + h, left : left + w], region, 0.9)
    assert detector(over) and detector.score(over) == pytest.approx(1.0)
    assert not detector(play) and detector.score(play) < 0.9
    # `rayapp calibrate-score --game-over FRAME.png` cuts the picture out; the config uses it on top of any reward
    shot = tmp_path / "over_frame.png"
    cv2.imwrite(str(shot), cv2.cvtColor(over, cv2.COLOR_RGB2BGR))
    yaml = tmp_path / "g.yaml"
    yaml.write_text(f"env:\n  game_over_region: {region}\n")
    assert main(["calibrate-score", "--config", str(yaml), "--game-over", str(shot)]) == 0
    png = tmp_path / "g.game_over.png"
    assert f"written to {png}" in capsys.readouterr().out
    cfg = load_config(str(yaml), [f"env.game_over_template={png}"]).env
    src = make_reward_source(cfg)
    assert src.name == "none"
    assert [src.step(f).terminated for f in (play, play, over)] == [False, False, True]
    assert src.step(over).info == {"game_over_screen": True}
    cfg.game_over_region = [64, 3, 21, 14]
    with pytest.raises(
        ConfigError, match="env.game_over_template is 20x14 pixels, env.game_over_region .* is 21x14"
    ):
        make_reward_source(cfg)


# ---- the real window and the game API, under Xvfb ------------------------------------------------
class ArcadeClock:
    """ScreenEnv's frame clock, driving an in-process arcade: each step's wait lets the window read
    the keys the env holds (XTEST -> X server -> SDL), plays 4 emulator frames with them (as the
    arcade at 60 fps does in one 15 fps step) and draws the last; it records the emulator's score."""

    def __init__(self, arcade, cover: range = range(0)):
        self.arcade, self.index, self.dropped, self.cover = arcade, 0, 0, cover
        self.expect, self.seen = (
            0,
            [],
        )  # the emulator action of the keys the env holds; whether the window saw it
        self.scores: list[tuple[float, float]] = []  # (score drawn one frame before, score) per step

    def start(self) -> float:
        self.index = self.dropped = 0
        return 0.0

    def wait(self) -> Tick:
        import time

        deadline = time.monotonic() + 1.0
        while True:  # until the window has read the keys of the action the env holds (`expect`)
            self.arcade.poll()
            action = self.arcade.action()
            if action == self.expect or time.monotonic() > deadline:
                break
            time.sleep(0.002)
        self.seen.append(action == self.expect)
        for k in range(4):
            if k == 3:
                before = self.arcade.score
            self.arcade.step(action)
        self.arcade.show()
        if self.index + 1 in self.cover:  # something drawn over the score's middle digit for this step
            self.arcade.screen.fill((255, 255, 255), (3 * 50, 3 * 4, 3 * 16, 3 * 12))
            self.arcade.pg.display.flip()
        self.scores.append((before, self.arcade.score))
        self.index += 1
        return Tick(self.index, 0.0, 0)


def test_screen_env_reads_the_arcade_windows_score_and_plays_an_episode(xdisplay_, tmp_path, capsys):
    """The arcade window (a real pygame window on Xvfb) is calibrated from four captures showing
    known scores; then a ScreenEnv with env.reward=screen_score plays an episode through the
    keyboard, three of its frames with the score covered."""
    pytest.importorskip("pygame")
    from rayapp.envs.screen import ScreenCapture, ScreenEnv
    from rayapp.frames import FrameSpec
    from rayapp.play.arcade import Arcade

    arcade = Arcade(load_config(None, ["env.game=Breakout", "run.seed=1"]))
    templates = str(tmp_path / "breakout.score.npz")
    cfg = load_config(ARCADE_SCREEN, ["env.reward=screen_score", f"env.score_region={REGION}",
                                      f"env.score_templates={templates}", "env.max_episode_steps=450"])  # fmt: skip
    try:
        cap = ScreenCapture(cfg.env)
        try:
            labelled = []
            for s in (0, 123, 456, 789):
                arcade.env.reset(seed=0)
                set_score(arcade.env, s)
                for _ in range(3):
                    arcade.frame, *_ = arcade.env.step(0)
                arcade.show()
                labelled.append((cap.grab(), s))  # the window's pixels, env.frame_size [210, 160]
        finally:
            cap.close()
        from rayapp.envs.screen.calibrate import calibrate_score

        calibrate_score(cfg, labelled)
        # the command, capturing the window (which shows 789 now) itself
        one = tmp_path / "one.npz"
        assert main(["calibrate-score", "--config", ARCADE_SCREEN, "--set", f"env.score_region={REGION}",
                     "--set", f"env.score_templates={one}", "--capture", "789"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert (
            f"digits [7, 8, 9] from 1 labelled frame(s) of env.score_region {REGION} written to {one}" in out
        )
        assert "not seen yet: [0, 1, 2, 3, 4, 5, 6]" in out
        arcade.frame, _ = arcade.env.reset(seed=1)
        arcade.score = 0.0
        arcade.show()
        covered = range(200, 203)
        clock = ArcadeClock(arcade, covered)
        env = ScreenEnv(cfg.env, cfg.inputs, FrameSpec(), clock=clock)
        try:
            _, info = env.reset()
            assert info["reward_source"] == "screen_score" and info["score"] == 0.0
            total, read, errors, truncated = 0.0, [], [], False
            while not truncated:
                clock.expect = tracking_action(
                    env.last_frame
                )  # inputs.keys are in the emulator's action order
                _, reward, terminated, truncated, info = env.step(clock.expect)
                assert not terminated
                total += reward
                if info["reward_error"]:
                    errors.append((info["frame_index"], info["reward_errors"], reward))
                else:
                    read.append((info["score"], clock.scores[-1]))
            pressed_during = len(held_keys(xdisplay_))
        finally:
            env.close()
    finally:
        arcade.close()
    assert arcade.summary.scores == []  # no game over in between
    assert errors == [(200, 1, 0.0), (201, 2, 0.0), (202, 3, 0.0)]  # the covered steps: reported, counted
    exact = np.mean([r == s for r, (_, s) in read])
    lag_aware = np.mean([r in (b, s) for r, (b, s) in read])
    with capsys.disabled():
        print(f"\n  arcade window under Xvfb, {len(read)} steps: screen score = emulator score on {exact:.4f} of "
              f"frames ({lag_aware:.4f} counting the game's one-frame drawing lag); reward sum {total:g}, "
              f"emulator score {arcade.score:g}")  # fmt: skip
    assert all(clock.seen) and arcade.score >= 5  # the keys played the game
    assert exact >= 0.99 and lag_aware == 1.0
    assert total == read[-1][0] and total in clock.scores[-1]  # the reward sum is the score change
    assert pressed_during <= 1
