"""Deployment: versions agree across pyproject/Docker/KubeRay, manifests are sound, the job entry
points document themselves, and the smoke pipeline runs through `ray job submit` on a real head."""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHECK_KUBERAY = ROOT.parent / "shared" / "tools" / "check-kuberay"


def ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray[")]
    return ray_dep.split("==")[1]


def manifests():
    for path in sorted((ROOT / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def containers(doc):
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [("head", spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in spec.get("workerGroupSpecs", [])
    ]
    for name, g in groups:
        for c in g["template"]["spec"]["containers"]:
            yield name, c


def test_ray_version_agrees_everywhere():
    import ray

    pin = ray_pin()
    assert ray.__version__ == pin
    tags = [
        line.split()[1]
        for f in (ROOT / "docker").glob("Dockerfile.*")
        for line in f.read_text().splitlines()
        if line.startswith("FROM ")
    ]
    assert sorted(tags) == [f"rayproject/ray:{pin}-py311", f"rayproject/ray:{pin}-py311-gpu"]
    versions = set()
    for _name, doc in manifests():
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        versions.add(spec["rayVersion"])
    assert versions == {pin}


def test_manifests_keep_secrets_out_and_resources_in():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    kinds = set()
    for name, doc in manifests():
        kinds.add(doc["kind"])
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP", (
            f"{name}: the dashboard must not leave the cluster"
        )
        gpu_groups = 0
        for group, c in containers(doc):
            res = c["resources"]
            assert res.get("requests") and res.get("limits"), f"{name} {group}: requests and limits"
            assert {"name": "rayapp-s3"} in [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
            for env in c.get("env", []):
                assert not env["name"].startswith("AWS_") or "valueFrom" in env, (
                    f"{name}: inline credentials {env['name']}"
                )
            assert re.fullmatch(rf"rayapp:{re.escape(version)}-(cpu|gpu)", c["image"]), c["image"]
            if "nvidia.com/gpu" in res["limits"]:
                gpu_groups += 1
                assert c["image"].endswith("-gpu")
        if doc["kind"] == "RayCluster":
            assert gpu_groups >= 1 and any(g["groupName"] == "cpu" for g in spec["workerGroupSpecs"])
        else:
            assert doc["spec"]["entrypoint"].startswith("python jobs/")
    assert kinds == {"RayCluster", "RayJob"}
    # no Secret objects (or their data) live in the repo: the README tells users to create rayapp-s3 themselves
    docs = [d for p in (ROOT / "k8s").glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
    assert not [d for d in docs if d.get("kind") == "Secret" or "stringData" in d or "data" in d]


def _command(argv: list[str]) -> tuple[str, str, list[str]]:
    """`python jobs/X.py --config C --set k=v ...` -> (the rayapp command X runs, C, the sets)."""
    assert argv[0] == "python" and argv[1].startswith("jobs/"), argv
    command = re.search(r'main\(\["(\w+)"', (ROOT / argv[1]).read_text()).group(1)
    args = argv[2:]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return command, args[args.index("--config") + 1], sets


def _asks(cfg, command: str) -> list[tuple[str, dict]]:
    """(who, Ray resources) for every process `command` starts; `driver` is the entrypoint's own
    process (on KubeRay: the head pod) and `sweep trial` a trial's own process: both only
    coordinate, so any device they ask for is one they never use."""
    from rayapp.rl.dqn_config import learner_placement, resource_bundles

    def finetune(c):
        n, gpus = learner_placement(c.finetune)
        bundles = resource_bundles(c, 0)[1:]
        return [("driver", {"GPU": gpus if n == 0 else 0.0})] + [("finetune actor/task", b) for b in bundles]

    def pretrain(c):
        p = c.pretrain
        worker = {"CPU": p.cpus_per_worker, "GPU": p.gpus_per_worker if p.use_gpu else 0.0}
        return [("pretrain worker", worker)] * p.num_workers

    record = [("collector", {"CPU": cfg.record.collector_cpus, **cfg.record.collector_resources})]
    evaluate = [("eval task", {"CPU": cfg.eval.cpus_per_worker})]
    if command == "sweep":
        sw = cfg.sweep
        trial = [("sweep trial", {"CPU": sw.trial_cpus, "GPU": sw.trial_gpus})]
        return trial + (pretrain(cfg) if sw.stage == "pretrain" else finetune(cfg)[1:])
    return {"record": record, "pretrain": pretrain(cfg), "finetune": finetune(cfg), "evaluate": evaluate,
            "pipeline": record + pretrain(cfg) + finetune(cfg) + evaluate}[command]  # fmt: skip


def _quantity(q) -> float:
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _nodes(doc) -> dict[str, dict[str, float]]:
    """What each group's Ray node offers: `num-cpus` from rayStartParams, else the container's limits."""
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    out = {}
    for name, c in containers(doc):
        group = (
            spec["headGroupSpec"]
            if name == "head"
            else next(g for g in spec["workerGroupSpecs"] if g["groupName"] == name)
        )
        limits = c["resources"]["limits"]
        cpus = group.get("rayStartParams", {}).get("num-cpus", limits["cpu"])
        out[name] = {"CPU": _quantity(cpus), "GPU": _quantity(limits.get("nvidia.com/gpu", 0))}
    return out


def _job_commands():
    """Every job command we ship: the RayJob entrypoints and the jobs/ docstrings' "How to run"."""
    import shlex

    for name, doc in manifests():
        if doc["kind"] == "RayJob":
            yield name, shlex.split(doc["spec"]["entrypoint"]), doc
    for path in sorted((ROOT / "jobs").glob("*.py")):
        text = path.read_text().replace("\\\\\n", " ")  # the docstrings' `\\` continuations
        for line in text.splitlines():
            if "python jobs/" in line:
                yield path.name, shlex.split(line[line.index("python jobs/") :]), None


def test_no_stage_asks_for_a_device_where_its_process_does_not_run():
    """Each shipped job command: its config validates (a GPU learner in the driver is refused); the
    processes that only coordinate (the driver, a sweep trial's own) ask for no GPU; and on the
    RayJob's own cluster every actor or task finds a node with what it asks for (the GPU learner
    on the GPU group; nothing GPU-bound on the head, which has no GPU)."""
    from rayapp.config import load_config

    seen = set()
    for name, argv, doc in _job_commands():
        command, config, sets = _command(argv)
        cfg = load_config(str(ROOT / config), sets)
        asks = _asks(cfg, command)
        for who, res in asks:
            if who in ("driver", "sweep trial"):
                assert not res.get("GPU"), (
                    f"{name}: {' '.join(argv)}: the {who} asks for a GPU, but it only coordinates "
                    "(the driver runs on the CPU-only head): the GPU belongs to a remote learner or worker"
                )
        if cfg.finetune.use_gpu and command in ("finetune", "pipeline"):
            assert ("finetune actor/task", {"CPU": 0.0, "GPU": 1.0}) in asks, name  # a remote GPU learner
        if doc is not None:
            nodes = _nodes(doc)
            assert nodes["head"]["GPU"] == 0
            for who, res in asks:
                fits = [
                    n for n, have in nodes.items() if all(have.get(k, 0) >= v for k, v in res.items() if v)
                ]
                assert fits, f"{name}: the {who} asks for {res}, which no node of {nodes} offers"
        seen.add((name, command))
    assert {
        ("ray-job.pipeline.yaml", "pipeline"),
        ("ray-job.sweep.yaml", "sweep"),
        ("finetune.py", "finetune"),
    } <= seen


@pytest.mark.skipif(
    not CHECK_KUBERAY.exists(),
    reason="../shared/tools/check-kuberay is not beside this checkout (.ci/run runs it when it is)",
)
def test_manifests_pass_kuberay_schema_check():
    p = subprocess.run(
        [sys.executable, str(CHECK_KUBERAY), *map(str, sorted((ROOT / "k8s").glob("*.yaml")))],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_images_carry_no_secrets_and_ignore_local_state():
    for f in (ROOT / "docker").glob("Dockerfile.*"):
        text = f.read_text()
        assert not re.search(r"^(ENV|ARG)\s+.*AWS_", text, re.M), f"{f.name}: credentials in the image"
        assert "pip install --no-cache-dir torch==" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv/", ".git/", "runs/", ".env"):
        assert entry in ignored


@pytest.mark.parametrize("name", ["pipeline", "pretrain", "finetune", "sweep"])
def test_job_entry_points_document_themselves(name):
    text = (ROOT / "jobs" / f"{name}.py").read_text()
    assert "How to run" in text and "Results to expect" in text
    assert "ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\" in text
    assert f"python jobs/{name}.py --config" in text
    p = subprocess.run(
        [sys.executable, f"jobs/{name}.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0 and "--config" in p.stdout


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def ray_head(tmp_path):
    """A real head started with `ray start --head --block` from this virtual environment (token auth on).

    The head runs in its own process group and is stopped by signalling that group: `ray stop` would
    also kill every other Ray instance on the machine (the test session's own, a benchmark's)."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must stay under 107 chars
    dash = _free_port()
    # this cluster's own token, for the head and every client below: a fresh machine has no
    # ~/.ray/auth_token, and `ray start` refuses token auth without one
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    log = open(tmp_path / "ray-start.log", "w")
    head = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", f"--port={_free_port()}", f"--dashboard-port={dash}",
         "--dashboard-host=127.0.0.1", "--num-cpus=4",
         # the test session's own Ray already holds the agent's default port (52365)
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}", f"--temp-dir={temp}", "--include-dashboard=true",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while _job(ray_bin, address, env, "list", timeout=60).returncode != 0:
            assert head.poll() is None, (tmp_path / "ray-start.log").read_text()
            assert time.time() < deadline, "the head did not come up in 180 s"
            time.sleep(2)
        yield ray_bin, address, env
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, sig)
                head.wait(wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        try:  # daemons that outlived `ray start` (raylet, GCS, dashboard) share its process group
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _job(ray_bin, address, env, *args, timeout=120):
    deadline = time.time() + timeout
    while True:
        p = subprocess.run(
            [ray_bin, "job", args[0], "--address", address, *args[1:]],  # before any `--` of the entrypoint
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
        # a fresh head answers `ray job list` a little before its dashboard agent takes submissions
        if "No available agent to submit job" not in p.stdout + p.stderr or time.time() > deadline:
            return p
        time.sleep(3)


def _wait(ray_bin, address, env, job_id, timeout):
    deadline = time.time() + timeout
    status = ""
    while time.time() < deadline:
        p = _job(ray_bin, address, env, "status", job_id)
        # `ray job status` prints "Status for job '...': RUNNING" while it runs, then "Job '...' succeeded/failed"
        out = p.stdout + p.stderr
        m = re.search(r"Job '\w+' (succeeded|failed|was stopped)", out) or re.search(
            r": (PENDING|RUNNING)", out
        )
        status = m.group(1).upper().replace("WAS ", "") if m else status
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(3)
    return status


def test_smoke_pipeline_through_ray_job_submit(ray_head, tmp_path):
    ray_bin, address, env = ray_head
    run = tmp_path / "run"
    # a config that does not validate fails before any Ray work, with the same one-line message
    bad = _job(ray_bin, address, env, "submit", "--no-wait", "--working-dir", ".", "--",
               "python", "jobs/pipeline.py", "--config", "configs/smoke.yaml", "--set", "record.episdes=2")  # fmt: skip
    assert re.search(r"raysubmit_", bad.stdout + bad.stderr), (bad.stdout + bad.stderr)[-2000:]
    bad_id = re.search(r"(raysubmit_\w+)", bad.stdout + bad.stderr).group(1)
    assert _wait(ray_bin, address, env, bad_id, 120) == "FAILED"
    logs = _job(ray_bin, address, env, "logs", bad_id).stdout
    assert (
        "rayapp pipeline: error: --set: unknown config key 'record.episdes' (did you mean 'record.episodes'?)"
        in logs
    )
    assert "Traceback" not in logs and "[record] running" not in logs

    sub = _job(ray_bin, address, env, "submit", "--no-wait", "--working-dir", ".", "--",
               "python", "jobs/pipeline.py", "--config", "configs/smoke.yaml", "--set", f"run.dir={run}")  # fmt: skip
    assert sub.returncode == 0, sub.stdout + sub.stderr
    job_id = re.search(r"(raysubmit_\w+)", sub.stdout + sub.stderr).group(1)
    status = _wait(ray_bin, address, env, job_id, 900)
    logs = _job(ray_bin, address, env, "logs", job_id).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    for stage in ("record", "pretrain", "finetune", "evaluate", "report"):
        assert f"[{stage}] running" in logs
    report = (run / "report.md").read_text()
    # the chosen policy is labelled by what won selection: a fine-tuned point, or the BC point
    best = json.loads((run / "finetune" / "best.json").read_text())
    chosen = "BC (no fine-tuned policy beat it)" if best["metrics"]["phase"] == "bc" else "fine-tuned agent"
    assert (
        "| scripted teacher |" in report
        and "| random |" in report
        and "| BC agent |" in report
        and f"| {chosen} |" in report
    ), report[:2000]
    for img in (
        "eval/scores.png",
        "eval/gameplay.gif",
        "report/pretrain.png",
        "report/confusion.png",
        "report/finetune.png",
    ):
        assert (run / img).exists(), img
        assert f"({img})" in report
