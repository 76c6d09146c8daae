"""Starting or joining Ray, the same way for every stage."""

from __future__ import annotations

import logging
import os

from rayapp.config import RayConfig
from rayapp.console import attach_ray
from rayapp.errors import RayappError
from rayapp.logs import install as quiet_logs

__all__ = ["init_ray", "cluster_nodes", "require_cpus_beside"]

log = logging.getLogger(__name__)
_started_here = False  # this process started the local Ray (no autoscaler can add CPUs to it)


def init_ray(cfg: RayConfig) -> None:
    """Join `ray.address` (or RAY_ADDRESS, as under `ray job submit`), else start a local Ray.

    A Ray already initialised in this process (tests, notebooks) is used as is.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS") or None
    quiet_logs()
    # no job-level worker_process_setup_hook for the filter: it keeps Ray from using prestarted
    # workers (about 1.5 s more per actor here); the workers' stderr goes to the log file anyway
    kwargs: dict = {"log_to_driver": True, "logging_level": logging.WARNING}
    if address is None:
        kwargs.update(num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=cfg.dashboard)
    global _started_here
    try:
        ray.init(address=address, **kwargs)
        _started_here = address is None
    except (ConnectionError, RuntimeError, ValueError) as e:
        msg = " ".join(str(e).split())[:200]
        raise RayappError(
            f"cannot join the Ray cluster at {address}: {msg} (check ray.address / RAY_ADDRESS and `ray status`)"
        ) from None

    attach_ray()  # under the CLI: workers' stderr (Ray's logs, tracebacks) to the log file only


def cluster_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def require_resources(resources: dict, key: str, count: int = 1, what: str = "") -> None:
    """Fail fast when the cluster cannot hold `count` actors asking for these custom resources each
    (Ray would wait forever)."""
    if not resources or count < 1:
        return
    import ray

    have = ray.cluster_resources()
    for name, amount in resources.items():
        need = float(amount) * count
        if float(amount) > 0 and have.get(name, 0.0) < need:
            many = f" for {count} {what}" if count > 1 else ""
            raise RayappError(
                f"{key}: this Ray cluster offers {have.get(name, 0.0):g} {name!r}, not the {need:g} needed{many}; "
                f"start (more) game PCs with `ray start --address=<head>:6379 --resources='{{\"{name}\": 1}}'`"
            )


def require_cpus_beside(workers: int, cpus_per_worker: float, read_cpus: float, key: str) -> None:
    """Fail fast when training workers would take the CPUs the ingest's read tasks need: the
    trainer starts, then waits forever for data. Checked on a local Ray this process started; on a
    cluster an autoscaler may add nodes, so only a warning there."""
    import ray

    have = float(ray.cluster_resources().get("CPU", 0.0))
    left = have - workers * cpus_per_worker
    if left + 1e-9 >= read_cpus:
        return
    msg = (f"{key}: {workers} worker(s) x {cpus_per_worker:g} CPUs leave {left:g} of this Ray's {have:g} CPUs, less "
           f"than the {read_cpus:g} (data.read_cpus) a read task needs, so the ingest would never run; lower {key} "
           f"to {max(0.0, (have - read_cpus) / max(workers, 1)):g} or less (the torch_threads key sets the threads)")  # fmt: skip
    if _started_here:
        raise RayappError(msg)
    log.warning("%s (unless an autoscaler adds nodes)", msg)
