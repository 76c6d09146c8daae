"""The `rayapp` command.

Every command takes ``--config FILE.yaml`` and any number of ``--set section.key=value``;
``data.uri`` is the dataset a stage reads or writes and ``run.dir`` the folder it writes to.

    rayapp record   --config configs/quickstart.yaml --set data.uri=s3://replays/breakout
    rayapp inspect  runs/quickstart/replays --sample 24
    rayapp pipeline --config configs/quickstart.yaml
    rayapp arcade   --game Breakout
    rayapp calibrate-score --config configs/arcade-screen.yaml --frame shot.png=120
    rayapp config keys
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from rayapp import __version__, console
from rayapp.config import Config, describe_keys, dump_config, load_config, set_key
from rayapp.errors import RayappError, ScoreCalibrationError
from rayapp.logs import install as quiet_logs

__all__ = ["main", "build_parser"]

COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {}
# commands that run Ray: they keep a log file (rayapp.console), the console ends with one error line
RAY_COMMANDS = ("record", "pretrain", "finetune", "sweep", "evaluate", "pipeline", "lam")


def command(name: str) -> Callable:
    def deco(fn: Callable[[Config, argparse.Namespace], int]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return deco


@command("record")
def _record(cfg: Config, args: argparse.Namespace) -> int:
    if cfg.record.source == "screen":  # a person at the screen: this process, no Ray
        from rayapp.record_screen import record_screen

        print(record_screen(cfg).line())
        return 0
    from rayapp.record import record

    summary = record(cfg)
    print(summary.line())
    return 0


@command("import-video")
def _import_video(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.import_video import import_video

    print(import_video(cfg, args.sources).line())
    return 0


@command("inspect")
def _inspect(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.replay.inspect import inspect_dataset

    uri = args.uri or cfg.data_uri
    out = args.out or (os.path.join(cfg.run.dir, "inspect", "contact_sheet.png") if args.sample else None)
    report = inspect_dataset(uri, frames=not args.no_frames, sample=args.sample, out=out, seed=cfg.run.seed)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    if not report.ok:
        print(f"rayapp inspect: {len(report.corrupt)} corrupt shard(s) in {report.uri}", file=sys.stderr)
        return 1
    return 0


@command("pretrain")
def _pretrain(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.train.bc import pretrain

    r = pretrain(cfg)
    shown = {
        k: round(v, 4) for k, v in r.metrics.items() if isinstance(v, float) and not k.startswith("data/")
    }
    print(f"best checkpoint {r.checkpoint} (epoch {r.metrics.get('epoch')}): {shown}")
    return 0


@command("finetune")
def _finetune(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.rl.finetune import finetune

    r = finetune(cfg)
    for p in r.curve:
        print(
            f"  {p['phase']:<8} env steps {p['env_steps']:>8,}  greedy score {p['mean']:7.2f} +- {p['std']:.2f}"
        )
    print(f"best policy {r.policy}; final policy {r.final_policy}")
    return 0


@command("sweep")
def _sweep(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.tune.sweep import sweep

    print(sweep(cfg).text())
    return 0


@command("evaluate")
def _evaluate(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.evaluate import evaluate

    report = evaluate(cfg, args.checkpoint or cfg.run.dir, out_dir=args.out)
    print(report.text())
    return 0


@command("pipeline")
def _pipeline(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.pipeline import run_pipeline

    return run_pipeline(cfg, stages=args.stages, force=args.force)


@command("arcade")
def _arcade(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.play.arcade import run_arcade

    run_arcade(cfg)
    return 0


@command("play")
def _play(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.play.player import play

    play(cfg, args.checkpoint or cfg.run.dir)
    return 0


@command("lam")
def _lam(cfg: Config, args: argparse.Namespace) -> int:
    if args.checkpoint:
        set_key(cfg, "lam.checkpoint", args.checkpoint, "--checkpoint")
    if args.lam_command == "train":
        from rayapp.train.lam import train_lam

        r = train_lam(cfg)
        shown = {k: round(v, 3) for k, v in r.metrics.items() if k.startswith("val/") and isinstance(v, float)}
        print(f"best latent action model {r.checkpoint} (step {r.metrics.get('step')}): {shown}")
    elif args.lam_command == "label":
        from rayapp.train.lam_label import label_dataset

        print(label_dataset(cfg, args.input or cfg.data_uri, args.output).line())
    elif args.lam_command == "dream":
        from rayapp.train.lam_dream import dream

        print(dream(cfg, args.out, codes=args.codes))
    else:
        from rayapp.train.lam_map import map_to_controls

        print(map_to_controls(cfg).line())
    return 0


@command("calibrate-score")
def _calibrate_score(cfg: Config, args: argparse.Namespace) -> int:
    from rayapp.envs.screen.calibrate import (
        calibrate_score,
        capture_frame,
        labelled_frame,
        summary,
        write_game_over,
    )

    frames = [labelled_frame(spec) for spec in args.frames]
    frames += [(capture_frame(cfg), int(score)) for score in args.capture]
    if not frames and not args.game_over:
        raise ScoreCalibrationError(
            "rayapp calibrate-score needs labelled frames: --frame FILE.png=SCORE or --capture SCORE"
        )
    if frames:
        t, out = calibrate_score(cfg, frames)
        print(summary(t, len(frames), out))
    if args.game_over:
        out = write_game_over(cfg, args.game_over, args.config)
        print(f"game-over picture (env.game_over_region {cfg.env.game_over_region}) written to {out}; "
              f"episodes end on it with env.game_over_template: {out}")  # fmt: skip
    return 0


@command("config")
def _config(cfg: Config, args: argparse.Namespace) -> int:
    if args.what == "keys":
        for key, tp, default, help in describe_keys():
            print(f"{key:<32} {tp:<28} default {default!r}\n    {help}")
    else:
        print(dump_config(cfg), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE.yaml", help="YAML deltas over the defaults (configs/*.yaml)"
    )
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one key; repeatable (e.g. --set data.uri=s3://replays/breakout)")  # fmt: skip
    common.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    p = argparse.ArgumentParser(prog="rayapp", description=__doc__.split("\n\n")[0], parents=[common])
    p.add_argument("--version", action="version", version=f"rayapp {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rec = sub.add_parser(
        "record",
        parents=[common],
        help="record episodes into data.uri: collectors on the emulator, or a person at the screen (--source screen)",
    )
    rec.add_argument("--source", choices=["atari", "screen"], help="short for --set record.source=SOURCE")

    imp = sub.add_parser("import-video", parents=[common],
                         help="gameplay video without inputs (numbered PNG folders, MP4/MKV files) into data.uri, no actions")  # fmt: skip
    imp.add_argument("sources", nargs="+", metavar="SOURCE", help="a folder of episode folders of numbered PNGs, one such folder, video files")

    ins = sub.add_parser("inspect", parents=[common], help="summarise and validate a dataset")
    ins.add_argument("uri", nargs="?", help="dataset URI (default: data.uri)")
    ins.add_argument(
        "--sample", type=int, default=0, metavar="N", help="write a PNG contact sheet of N random frames"
    )
    ins.add_argument(
        "--out", help="where the contact sheet goes (default: <run.dir>/inspect/contact_sheet.png)"
    )
    ins.add_argument("--json", action="store_true", help="print the report as JSON")
    ins.add_argument(
        "--no-frames", action="store_true", help="validate footers and columns without decoding frames"
    )

    sub.add_parser(
        "pretrain",
        parents=[common],
        help="behaviour cloning on Ray Train from data.uri into run.dir/pretrain",
    )

    sub.add_parser(
        "finetune", parents=[common], help="RLlib DQN from the BC network: offline on data.uri, then online"
    )

    sub.add_parser(
        "sweep", parents=[common], help="Ray Tune over sweep.space for sweep.stage (pretrain or finetune)"
    )

    ev = sub.add_parser(
        "evaluate", parents=[common], help="play the game with a checkpoint against the teacher and random"
    )
    ev.add_argument(
        "--checkpoint", help="a run folder (its best checkpoint) or a checkpoint folder (default: run.dir)"
    )
    ev.add_argument("--out", help="output folder (default: <run.dir>/eval)")

    pipe = sub.add_parser(
        "pipeline", parents=[common], help="run the stages in order, skipping those already done"
    )
    pipe.add_argument("--stages", nargs="+", default=None, help="only these stages, space- or comma-separated (record pretrain or record,pretrain)")
    pipe.add_argument("--force", action="store_true", help="rerun stages whose output exists")

    arc = sub.add_parser(
        "arcade",
        parents=[common],
        help="play an ALE game (env.game) in a window with the keyboard (inputs.keys)",
    )
    arc.add_argument("--game", help="the game (short for --set env.game=GAME), e.g. Breakout, Pong")
    arc.add_argument("--game-api", metavar="HOST:PORT",
                     help="serve the game-API protocol there (short for --set arcade.game_api=HOST:PORT)")  # fmt: skip

    ply = sub.add_parser(
        "play",
        parents=[common],
        help="the policy plays live (emulator window or the screen), reloading newer weights; kill switch play.kill_switch",
    )
    ply.add_argument("--checkpoint", help="a run folder or s3:// prefix (its best.json, watched) or a checkpoint folder "
                     "(default: run.dir)")  # fmt: skip
    ply.add_argument("--env", choices=["atari", "screen"], help="short for --set env.backend=ENV")
    ply.add_argument("--record", metavar="URI", help="record what is played there (short for --set play.record=URI)")
    ply.add_argument("--video", metavar="FILE", help="a .gif or .mp4 of the first play.video_steps frames")

    lam = sub.add_parser("lam", parents=[common], help="latent actions: learn them from video, label, dream, map to controls")
    lam_sub = lam.add_subparsers(dest="lam_command", required=True, metavar="LAM_COMMAND")
    lam_train = lam_sub.add_parser("train", parents=[common], help="train the latent action model on data.uri's frame pairs (Ray Train)")
    lam_label = lam_sub.add_parser("label", parents=[common], help="write --input again with a latent_action column, to --output (Ray Data)")
    lam_label.add_argument("--input", metavar="URI", help="the dataset to label (default: data.uri)")
    lam_label.add_argument("--output", metavar="URI", required=True, help="where the labelled dataset goes")
    lam_dream = lam_sub.add_parser("dream", parents=[common], help="roll the model forward from a real frame under chosen codes, as a GIF")
    lam_dream.add_argument("--out", metavar="FILE.gif", help="the GIF (default: <run.dir>/lam/dream.gif)")
    lam_dream.add_argument("--codes", type=int, nargs="+", metavar="CODE", help="the code sequence (short for lam.dream_codes)")
    lam_map = lam_sub.add_parser("map", parents=[common],
                                 help="a head on a latent-action BC network, trained on labelled data.uri episodes: a policy for the real controls")
    for sp in (lam_train, lam_label, lam_dream, lam_map):
        sp.add_argument("--checkpoint", help="the LAM (label, dream) or latent BC run (map): a run folder or a checkpoint folder")
    # fmt: skip

    cal = sub.add_parser(
        "calibrate-score",
        parents=[common],
        help="digit templates for env.reward=screen_score from labelled frames (to env.score_templates)",
    )
    cal.add_argument("--frame", dest="frames", action="append", default=[], metavar="FILE.png=SCORE",
                     help="a captured frame (env.frame_size pixels) and the score it shows; repeatable")  # fmt: skip
    cal.add_argument("--capture", action="append", default=[], metavar="SCORE", type=int,
                     help="capture the configured screen now, which shows SCORE")  # fmt: skip
    cal.add_argument("--game-over", metavar="FILE.png",
                     help="a frame at game over: its env.game_over_region becomes env.game_over_template")  # fmt: skip

    cfgp = sub.add_parser("config", parents=[common], help="print the resolved config, or every key")
    cfgp.add_argument("what", nargs="?", choices=["show", "keys"], default="show")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet_logs()
    try:
        cfg = load_config(args.config, args.overrides)
        if getattr(args, "game", None):
            set_key(cfg, "env.game", args.game, "--game")
        if getattr(args, "game_api", None):
            set_key(cfg, "arcade.game_api", args.game_api, "--game-api")
        if (
            args.config
            and not cfg.env.score_templates
            and (cfg.env.reward == "screen_score" or args.command == "calibrate-score")
        ):
            from rayapp.envs.screen.calibrate import default_templates_path

            cfg.env.score_templates = default_templates_path(args.config)
        for flag, key in (("env", "env.backend"), ("record", "play.record"), ("video", "play.video")):
            if args.command == "play" and getattr(args, flag, None):
                set_key(cfg, key, getattr(args, flag), f"--{flag}")
        if getattr(args, "source", None):
            set_key(cfg, "record.source", args.source, "--source")
        if args.command in RAY_COMMANDS:
            console.start(args.command, cfg.run.dir, debug=args.debug)
        return COMMANDS[args.command](cfg, args)
    except RayappError as e:
        console.log_exception(e)
        if args.debug:
            raise
        console.finish()  # nothing Ray still has to say comes after the line
        print(f"rayapp {args.command}: error: {' '.join(str(e).split())}{console.where()}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - a bug: one line here, the traceback in the log file
        console.log_exception(e)
        if args.debug or not console.log_path():
            raise
        console.finish()
        msg = " ".join(str(e).split())[:300]
        print(
            f"rayapp {args.command}: unexpected error {type(e).__name__}: {msg}{console.where()}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"rayapp {args.command}: interrupted; what was already written is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
