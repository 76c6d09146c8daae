"""`rayapp record`: collectors play the game in parallel (Ray actors) and write one dataset.

Each collector owns an emulator, a policy and a `ReplayWriter`; the driver hands out episodes one
at a time (so fast and slow collectors balance themselves), shows progress, replaces a collector
that dies (its published shards stay; the shard in progress is lost), and finally writes a session
summary (`sessions/<id>.json`) with every episode's score as the emulator reported it.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rayapp.config import Config, config_from_dict, config_to_dict
from rayapp.envs.atari import dataset_info_for, make_atari_env
from rayapp.envs.policies import make_policy
from rayapp.errors import RayappError
from rayapp.progress import Progress
from rayapp.replay.dataset import create_dataset, write_session
from rayapp.replay.schema import DatasetInfo
from rayapp.replay.writer import ReplayWriter
from rayapp.runs import save_resolved_config
from rayapp.runtime import cluster_nodes, init_ray, require_resources
from rayapp.storage import resolve

__all__ = ["Collector", "RecordSummary", "record", "RECORDED_EXTRAS"]

log = logging.getLogger(__name__)

RECORDED_EXTRAS = ("score", "lives", "frame", "time", "teacher_action")


class Collector:
    """One emulator, one policy, one writer. Used as a Ray actor by `record`, or directly."""

    def __init__(
        self, cfg: dict[str, Any], info: dict[str, Any], dataset_uri: str, writer_id: str, seed: int
    ):
        self.cfg = config_from_dict(cfg)
        self.info = DatasetInfo.from_json(info)
        self.env = make_atari_env(self.cfg.env)
        self.rng = np.random.default_rng(seed)
        self.policy = make_policy(self.cfg.record, self.info.game, self.env, self.rng)
        r = self.cfg.record
        self.writer = ReplayWriter(
            dataset_uri,
            self.info,
            writer_id,
            shard_mb=r.shard_mb,
            shard_steps=r.shard_steps,
            max_shard_mb=r.max_shard_mb,
            row_group_rows=r.row_group_rows,
            row_group_mb=r.row_group_mb,
            compression_level=r.compression_level,
        )
        self.writer_id = writer_id
        self._seed: int | None = seed

    def pid(self) -> int:
        return os.getpid()

    def record_episode(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        obs, info = self.env.reset(seed=self._seed)
        self._seed = None  # later episodes continue the emulator's random stream
        self.policy.reset()
        episode = self.writer.begin_episode()
        score, steps = 0.0, 0
        write = self.writer.add_step
        while True:
            action, wanted = self.policy.act(obs)
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            score += float(reward)
            steps += 1
            write(
                obs, action, reward, terminated, truncated,
                score=score, lives=info.get("lives"), frame=info.get("episode_frame_number"),
                time=time.time(), teacher_action=wanted,
            )  # fmt: skip
            obs = next_obs
            if terminated or truncated:
                break
        shards_before = len(self.writer.shards)
        self.writer.end_episode()
        return {
            "episode_id": episode,
            "writer": self.writer_id,
            "score": score,
            "steps": steps,
            "terminated": bool(terminated),
            "seconds": time.perf_counter() - t0,
            "shards_published": len(self.writer.shards) - shards_before,
        }

    def close(self) -> list[dict[str, Any]]:
        shards = self.writer.close()
        self.env.close()
        return [asdict(s) for s in shards]


@dataclass
class RecordSummary:
    uri: str
    session: str
    episodes: list[dict[str, Any]] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    collectors_lost: list[str] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(e["steps"] for e in self.episodes)

    @property
    def scores(self) -> list[float]:
        return [e["score"] for e in self.episodes]

    def line(self) -> str:
        s = np.array(self.scores) if self.episodes else np.zeros(1)
        size = sum(x["bytes"] for x in self.shards)
        rate = self.steps / self.seconds if self.seconds else 0.0
        lost = f"; {len(self.collectors_lost)} collector(s) lost and replaced" if self.collectors_lost else ""
        return (
            f"recorded {len(self.episodes)} episodes, {self.steps:,} steps in {self.seconds:.1f} s ({rate:,.0f} steps/s) "
            f"into {self.uri}: {len(self.shards)} new shards, {size / 2**20:.2f} MiB; score mean {s.mean():.1f} "
            f"(min {s.min():g}, max {s.max():g}){lost}"
        )


def _describe(cfg: Config) -> DatasetInfo:
    env = make_atari_env(cfg.env)
    try:
        info = dataset_info_for(
            env, cfg.env, cfg.record.encoding, cfg.record.jpeg_quality, RECORDED_EXTRAS, {}
        )
        make_policy(
            cfg.record, info.game, env, np.random.default_rng(0)
        )  # an unknown teacher fails here, before Ray
    finally:
        env.close()
    return info


def record(cfg: Config, show_progress: bool = True) -> RecordSummary:
    """Record `record.episodes` episodes (and/or `record.steps` steps) into `data.uri`."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    r = cfg.record
    loc = resolve(cfg.data_uri)
    session = time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    info = _describe(cfg)
    noisy = r.policy == "noisy_teacher" or (r.policy == "checkpoint" and r.epsilon > 0)
    info.recorded_by = {"policy": r.policy, "epsilon": r.epsilon if noisy else 0.0, "session": session}
    if r.policy == "checkpoint":
        info.recorded_by["checkpoint"] = r.checkpoint
    if r.collector_resources:  # collectors bound for game PCs: check they are there before touching data
        init_ray(cfg.ray)
        require_resources(r.collector_resources, "record.collector_resources")
    info = create_dataset(loc, info, append=r.append)  # storage problems surface here, before Ray starts
    save_resolved_config(cfg, "record")
    init_ray(cfg.ray)
    if loc.is_local and cluster_nodes() > 1:
        log.warning(
            "data.uri %s is a local path on a %d-node cluster: each node writes to its own disk; use s3:// or a shared mount",
            loc.uri,
            cluster_nodes(),
        )

    actor_cls = ray.remote(Collector)
    cfg_dict, info_dict = config_to_dict(cfg), info.to_json()
    summary = RecordSummary(loc.uri, session)
    spawned = 0

    def spawn() -> tuple[Any, str]:
        nonlocal spawned
        wid = f"{session}-c{spawned:02d}"
        actor = actor_cls.options(
            name=f"rayapp-collector-{wid}",
            num_cpus=r.collector_cpus,
            resources={k: float(v) for k, v in r.collector_resources.items()} or None,
            max_restarts=0,
        ).remote(cfg_dict, info_dict, loc.uri, wid, cfg.run.seed * 10_000 + spawned)
        spawned += 1
        return actor, wid

    collectors = dict(spawn() for _ in range(r.collectors))  # actor -> writer id
    budget_eps = r.episodes or None
    t0 = time.perf_counter()
    in_flight: dict[Any, Any] = {}  # ref -> actor
    dispatched = 0

    def want_more() -> bool:
        if budget_eps is not None and dispatched >= budget_eps:
            return False
        if r.steps and summary.steps >= r.steps:
            return False
        return True

    def dispatch(actor: Any) -> None:
        nonlocal dispatched
        if want_more():
            in_flight[actor.record_episode.remote()] = actor
            dispatched += 1

    total = budget_eps if budget_eps is not None else None
    bar = Progress(total, "record", unit="ep", log_every=10) if show_progress else None
    failure: BaseException | None = None
    try:
        for actor in list(collectors):
            dispatch(actor)
        while in_flight:
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            actor = in_flight.pop(ref)
            try:
                ep = ray.get(ref)
            except RayActorError as e:
                wid = collectors.pop(actor)
                dispatched -= 1  # the episode it was recording is lost: record it again
                summary.collectors_lost.append(wid)
                msg = f"collector {wid} died ({type(e).__name__}); its published shards are kept, its shard in progress is lost"
                if bar:
                    bar.write(msg)
                log.warning(msg)
                if len(summary.collectors_lost) > r.max_collector_restarts:
                    raise RayappError(
                        f"{len(summary.collectors_lost)} collectors died (record.max_collector_restarts={r.max_collector_restarts}); "
                        f"the {len(summary.episodes)} episodes recorded so far are kept in {loc.uri}: rerun with "
                        f"record.append=true to add more"
                    ) from None
                new_actor, new_wid = spawn()
                collectors[new_actor] = new_wid
                dispatch(new_actor)
                continue
            summary.episodes.append(ep)
            if bar:
                scores = summary.scores
                bar.update(
                    1,
                    frames=f"{summary.steps:,}",
                    fps=f"{summary.steps / (time.perf_counter() - t0):,.0f}",
                    score=f"{np.mean(scores):.1f}",
                )
            dispatch(actor)
    except RayTaskError as e:
        cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else e
        failure = cause
    except BaseException as e:  # Ctrl-C included: publish what the collectors hold, then stop
        failure = e
    finally:
        if bar:
            bar.close()
        for actor, wid in list(collectors.items()):
            try:
                summary.shards.extend(ray.get(actor.close.remote()))
            except RayActorError:
                summary.collectors_lost.append(wid)
            except RayTaskError as e:
                log.warning("collector %s failed to publish its last shard: %s", wid, e)
            ray.kill(actor)
        summary.seconds = time.perf_counter() - t0
        if summary.episodes:
            write_session(loc, session, {
                "session": session, "policy": r.policy, "epsilon": info.recorded_by.get("epsilon", 0.0),
                "seconds": summary.seconds, "episodes": summary.episodes, "shards": summary.shards,
                "collectors_lost": summary.collectors_lost, "config": cfg_dict,
            })  # fmt: skip
    if failure is not None:
        if isinstance(failure, RayappError):
            raise failure
        if isinstance(failure, Exception) and not isinstance(failure, RayappError):
            raise RayappError(
                f"recording failed: {type(failure).__name__}: {failure}; {len(summary.episodes)} episodes recorded so far are kept in {loc.uri}"
            ) from failure
        raise failure
    return summary
