"""The package's import graph follows its layers (README "Layout"): a module imports only from its
own layer or below, stages never import each other, and imports inside functions are kept for
heavy or hardware modules (Ray's libraries, torch, plotting, capture and input devices)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "rayapp"

# bottom to top; a module may import from its own layer and the layers before it
LAYERS: list[list[str]] = [
    [
        "rayapp",
        "rayapp.errors",
        "rayapp.config",
        "rayapp.storage",
        "rayapp.progress",
        "rayapp.runs",
        "rayapp.runtime",
        "rayapp.frames",
        "rayapp.metrics",
        "rayapp.logs",
        "rayapp.console",
        "rayapp.signals",
    ],  # fmt: skip
    ["rayapp.replay"],
    ["rayapp.models"],
    # inputs: keyboard/mouse/gamepad backends; screen: ScreenEnv, capture, windows (hardware imported lazily)
    ["rayapp.envs", "rayapp.envs.inputs", "rayapp.envs.screen"],
    ["rayapp.data"],
    # the stages: peers, never each other (record_screen: `rayapp record --source screen`, a person at the screen)
    ["rayapp.record", "rayapp.record_screen", "rayapp.import_video", "rayapp.train", "rayapp.rl", "rayapp.evaluate"],
    ["rayapp.report", "rayapp.tune", "rayapp.pipeline"],
    ["rayapp.play", "rayapp.cli"],  # play: the live player and `rayapp arcade` (pygame imported lazily)
]
STAGES = set(LAYERS[5])
# modules that choose a stage at run time and import it then (so `rayapp --help` stays fast)
DISPATCHERS = {"rayapp.cli", "rayapp.pipeline", "rayapp.tune.sweep"}
# third-party packages that may be imported inside functions: heavy to import, or hardware
HEAVY = {"ray", "torch", "matplotlib", "imageio", "tensorboard", "mss", "Xlib", "vgamepad", "pynput",
         "evdev", "libevdev", "pygame", "ale_py", "boto3", "moto", "av", "vector_quantize_pytorch", "wandb"}  # fmt: skip


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _imports(tree: ast.Module):
    """(imported module, line, inside a function?) for every import statement."""
    top = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.add(id(node))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno, id(node) not in top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno, id(node) not in top


def _group(module: str) -> tuple[int, str]:
    best = None
    for i, layer in enumerate(LAYERS):
        for g in layer:
            inside = module == g or (
                g != "rayapp" and module.startswith(g + ".")
            )  # "rayapp": the package only
            if inside and (best is None or len(g) > len(best[1])):
                best = (i, g)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layers.py: place it")
    return best


def _heavy(module: str, seen: frozenset = frozenset()) -> bool:
    """A rayapp module whose top-level imports pull a heavy package, directly or through others."""
    tree = MODULES.get(module)
    if tree is None or module in seen:
        return False
    for name, _, lazy in _imports(tree):
        root = name.split(".")[0]
        if not lazy and (root in HEAVY or (root == "rayapp" and _heavy(name, seen | {module}))):
            return True
    return False


def test_every_module_has_a_layer():
    for m in MODULES:
        _group(m)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    layer, group = _group(module)
    bad = []
    for name, line, lazy in _imports(MODULES[module]):
        if name.split(".")[0] != "rayapp":
            if lazy and name.split(".")[0] not in HEAVY:
                bad.append(
                    f"line {line}: `import {name}` inside a function (not heavy: import it at the top)"
                )
            continue
        other_layer, other_group = _group(name)
        if other_layer > layer:
            bad.append(f"line {line}: imports {name} from a higher layer")
        elif other_group != group and group in STAGES and other_group in STAGES:
            bad.append(f"line {line}: stage {group} imports stage {other_group}")
        if lazy and module not in DISPATCHERS and not _heavy(name):
            bad.append(f"line {line}: `import {name}` inside a function (neither a dispatcher nor heavy)")
    assert not bad, f"{module}:\n  " + "\n  ".join(bad)


def test_the_layer_check_sees_a_violation():
    tree = ast.parse("def f():\n    from rayapp.cli import main\n")
    found = [(n, lazy) for n, _, lazy in _imports(tree)]
    assert found == [("rayapp.cli", True)]
    assert _group("rayapp.cli")[0] > _group("rayapp.replay.reader")[0]
    assert _group("rayapp.rl.finetune")[1] != _group("rayapp.train.bc")[1]


def test_the_game_pc_side_runs_without_ray():
    """Capture, inputs, reward sources and ScreenEnv's loop import no Ray (nor torch): a thin client
    speaking RLlib's external-env protocol can drive a Windows game PC that has no Ray on it."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import rayapp.envs.screen, rayapp.envs.screen.env, rayapp.envs.screen.rewards, rayapp.envs.inputs\n"
        "import rayapp.envs.inputs.listen, rayapp.envs.screen.game_api\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch'))\n"
        "assert not bad, bad[:5]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
