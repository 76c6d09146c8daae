"""`rayapp record`: collectors play the game in parallel (Ray actors) and write one dataset.

Each collector owns an emulator, a policy and a `ReplayWriter`; the driver hands out episodes one
at a time (so fast and slow collectors balance themselves), shows progress, replaces a collector
that dies (its published shards stay; the shard in progress is lost, with the finished episodes in
it, which are recorded again), and finally writes a session summary (`sessions/<id>.json`) with
the score of every episode that was published, as the emulator reported it. An episode counts
once the shard holding its last step is published, never before.
"""

from __future__ import annotations

import contextlib
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
from rayapp.errors import RayappError, StorageError
from rayapp.progress import Progress
from rayapp.replay.dataset import create_dataset, write_session
from rayapp.replay.schema import DatasetInfo
from rayapp.replay.writer import ReplayWriter
from rayapp.runs import save_resolved_config
from rayapp.runtime import cluster_nodes, init_ray, require_resources
from rayapp.storage import STORAGE_ENV, resolve

__all__ = ["Collector", "RecordSummary", "record", "RECORDED_EXTRAS"]

log = logging.getLogger(__name__)

RECORDED_EXTRAS = ("score", "lives", "frame", "time", "teacher_action")


class Collector:
    """One emulator, one policy, one writer. Used as a Ray actor by `record`, or directly."""

    def __init__(
        self,
        cfg: dict[str, Any],
        info: dict[str, Any],
        dataset_uri: str,
        writer_id: str,
        seed: int,
        storage_env: dict[str, str] | None = None,
    ):
        # The driver's storage settings (endpoint, region, retry knobs; never credentials), so the
        # collector writes where the driver checked. An argument rather than a runtime_env: a
        # runtime_env makes Ray start a fresh worker process per collector (measured 10-11 s instead
        # of 1.6-2.5 s on the loaded 2-core test machine); this process is the actor's alone.
        os.environ.update(storage_env or {})
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
        self._reported = 0  # shards the driver has been told about

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
        self.writer.end_episode()
        published = self.unreported()
        return {
            "episode_id": episode,
            "writer": self.writer_id,
            "score": score,
            "steps": steps,
            "terminated": bool(terminated),
            "seconds": time.perf_counter() - t0,
            "shards_published": len(published),
            "published": published,  # taken out by the driver's ledger
        }

    def unreported(self) -> list[dict[str, Any]]:
        """The shards published that no call has reported yet. After a call failed (the storage
        went away mid-episode), the shards it published before failing are safe all the same."""
        shards = self.writer.shards[self._reported :]
        self._reported = len(self.writer.shards)
        return [asdict(s) for s in shards]

    def close(self) -> list[dict[str, Any]]:
        """Publish the shard in progress; returns the shards no `record_episode` reported."""
        try:
            self.writer.close()
        finally:
            self.env.close()
        return self.unreported()


@dataclass
class RecordSummary:
    uri: str
    session: str
    episodes: list[dict[str, Any]] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    collectors_lost: list[str] = field(default_factory=list)
    episodes_lost: int = 0  # finished, then lost with an unpublished shard (and recorded again)

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
        lost = ""
        if self.collectors_lost:
            lost = f"; {len(self.collectors_lost)} collector(s) lost and replaced"
            if self.episodes_lost:
                lost += f", {self.episodes_lost} finished episode(s) lost with them and recorded again"
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
    ledger = _Ledger(summary)
    # collectors write where the driver checked: its storage settings travel with them
    storage_env = {k: os.environ[k] for k in STORAGE_ENV if k in os.environ} if not loc.is_local else {}
    spawned = 0

    def spawn() -> Any:
        nonlocal spawned
        wid = f"{session}-c{spawned:02d}"
        actor = actor_cls.options(
            name=f"rayapp-collector-{wid}",
            num_cpus=r.collector_cpus,
            resources={k: float(v) for k, v in r.collector_resources.items()} or None,
            max_restarts=0,
        ).remote(cfg_dict, info_dict, loc.uri, wid, cfg.run.seed * 10_000 + spawned, storage_env)
        spawned += 1
        collectors[actor] = wid
        return actor

    collectors: dict[Any, str] = {}  # actor -> writer id
    for _ in range(r.collectors):
        spawn()
    budget_eps = r.episodes or None
    t0 = time.perf_counter()
    in_flight: dict[Any, Any] = {}  # ref -> actor
    dispatched = 0  # episodes asked for, less those lost

    def want_more() -> bool:
        if budget_eps is not None and dispatched >= budget_eps:
            return False
        return not (r.steps and ledger.steps() >= r.steps)

    def dispatch(actor: Any) -> None:
        nonlocal dispatched
        if want_more():
            in_flight[actor.record_episode.remote()] = actor
            dispatched += 1

    bar = Progress(budget_eps, "record", unit="ep", log_every=10) if show_progress else None

    def died(actor: Any, err: BaseException, recording: bool, replace: bool) -> None:
        """A collector died: what it had not published is lost; record it again elsewhere."""
        nonlocal dispatched
        wid = collectors.pop(actor)
        lost = ledger.lose(wid)
        dispatched -= lost + int(recording)
        summary.collectors_lost.append(wid)
        msg = (
            f"collector {wid} died ({type(err).__name__}); its published shards are kept, its shard in progress "
            f"is lost with the {lost} finished episode(s) in it"
            + (", which are recorded again" if lost and replace else "")
        )
        if bar:
            bar.write(msg)
        log.warning(msg)
        if replace and len(summary.collectors_lost) > r.max_collector_restarts:
            raise RayappError(
                f"{len(summary.collectors_lost)} collectors died (record.max_collector_restarts={r.max_collector_restarts}); "
                f"the {len(summary.episodes)} published episodes are kept in {loc.uri}: rerun with "
                f"record.append=true to add more"
            ) from None
        if replace and want_more():
            dispatch(spawn())

    def salvage(actor: Any) -> None:
        """A collector's call failed: the shards it published before failing are kept."""
        with contextlib.suppress(RayTaskError, RayActorError):
            ledger.published(collectors[actor], ray.get(actor.unreported.remote()))

    def take(ref: Any, actor: Any, replace: bool) -> None:
        """The result of one episode: into the ledger, or the collector's death handled."""
        try:
            ep = ray.get(ref)
        except RayActorError as e:
            if actor in collectors:
                died(actor, e, recording=True, replace=replace)
            return
        except RayTaskError:
            if actor in collectors:
                salvage(actor)
            raise
        ledger.finished(ep)
        if bar:
            steps = ledger.steps()
            fps = steps / (time.perf_counter() - t0)
            bar.update(1, frames=f"{steps:,}", fps=f"{fps:,.0f}", score=f"{np.mean(ledger.scores()):.1f}")
        if replace:
            dispatch(actor)

    def close_all(replace: bool) -> BaseException | None:
        """Publish what every collector holds (all at once); returns the first failure."""
        failed = None
        closing = {actor.close.remote(): actor for actor in list(collectors)}
        for ref, actor in closing.items():
            wid = collectors[actor]
            try:
                ledger.published(wid, ray.get(ref))
                del collectors[actor]
            except RayActorError as e:
                died(actor, e, recording=False, replace=replace)
            except RayTaskError as e:
                cause = _cause(e)
                salvage(actor)
                lost = ledger.lose(wid)
                del collectors[actor]
                log.warning(
                    "collector %s could not publish its last shard (%d episodes): %s", wid, lost, cause
                )
                failed = failed or cause
            ray.kill(actor)
        return failed

    failure: BaseException | None = None
    try:
        for actor in list(collectors):
            dispatch(actor)
        while True:
            while in_flight:
                done, _ = ray.wait(list(in_flight), num_returns=1)
                take(done[0], in_flight.pop(done[0]), replace=True)
            failure = close_all(replace=True)  # collectors that die here are replaced and the loop goes on
            if failure or not in_flight:
                break
    except RayTaskError as e:
        failure = _cause(e)
    except BaseException as e:  # Ctrl-C included: publish what the collectors hold, then stop
        failure = e
    finally:
        for ref, actor in list(in_flight.items()):  # the other collectors finish their episode first
            with contextlib.suppress(RayTaskError, RayActorError, RayappError):
                take(ref, actor, replace=False)
        in_flight.clear()
        failed_close = close_all(replace=False)
        failure = failure or failed_close
        if bar:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        unsaved = _save_session(loc, session, summary, r, info, cfg_dict, raise_errors=failure is None)
    if failure is None:
        return summary
    kept = (
        f"{len(summary.episodes)} episodes in {len(summary.shards)} shards published before are kept in {loc.uri}"
        + (
            f", {ledger.unpublished_count()} finished episodes were not published"
            if ledger.unpublished_count()
            else ""
        )
        + ("; the session summary could not be written either" if unsaved else "")
    )
    if isinstance(failure, StorageError):
        raise StorageError(
            f"recording stopped: {failure}; {kept}; rerun with record.append=true once the storage is back to add more"
        ) from failure
    if isinstance(failure, RayappError):
        raise failure
    if isinstance(failure, Exception):
        raise RayappError(f"recording failed: {type(failure).__name__}: {failure}; {kept}") from failure
    raise failure


def _cause(e: BaseException) -> BaseException:
    """What a collector raised, without Ray's wrapper (whose text is a whole remote traceback)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


def _save_session(loc, session, summary, r, info, cfg_dict, raise_errors: bool) -> bool:
    """Write `sessions/<id>.json`; True when it could not be written (and that was not raised)."""
    if not summary.episodes:
        return False
    try:
        write_session(loc, session, {
            "session": session, "policy": r.policy, "epsilon": info.recorded_by.get("epsilon", 0.0),
            "seconds": summary.seconds, "episodes": summary.episodes, "shards": summary.shards,
            "collectors_lost": summary.collectors_lost, "episodes_lost": summary.episodes_lost, "config": cfg_dict,
        })  # fmt: skip
    except StorageError:
        if raise_errors:
            raise
        log.debug("session summary not written", exc_info=True)
        return True
    return False


class _Ledger:
    """Which finished episodes are safe: an episode counts once the shard holding its last step is
    published. A collector that dies loses the finished episodes its unpublished shard holds."""

    def __init__(self, summary: RecordSummary):
        self.summary = summary
        self.unpublished: dict[str, dict[str, dict[str, Any]]] = {}  # writer -> episode id -> episode

    def finished(self, ep: dict[str, Any]) -> None:
        shards = ep.pop("published", [])
        self.unpublished.setdefault(ep["writer"], {})[ep["episode_id"]] = ep
        self.published(ep["writer"], shards)

    def published(self, wid: str, shards: list[dict[str, Any]]) -> None:
        waiting = self.unpublished.get(wid, {})
        for shard in shards:
            self.summary.shards.append(shard)
            for eid in shard.get("ended", []):
                if eid in waiting:
                    self.summary.episodes.append(waiting.pop(eid))

    def lose(self, wid: str) -> int:
        lost = len(self.unpublished.pop(wid, {}))
        self.summary.episodes_lost += lost
        return lost

    def scores(self) -> list[float]:
        return self.summary.scores + [e["score"] for v in self.unpublished.values() for e in v.values()]

    def unpublished_count(self) -> int:
        return sum(len(v) for v in self.unpublished.values())

    def steps(self) -> int:
        """Steps published or on their way (collectors alive): what the steps budget counts."""
        return self.summary.steps + sum(e["steps"] for v in self.unpublished.values() for e in v.values())
