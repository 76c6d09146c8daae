"""Convert checkpoints of the old pickled format (`model.pt`, rayapp.policy/1) to safetensors + JSON.

    python -m rayapp.models.convert runs/exp1                 # every checkpoint under a run folder
    python -m rayapp.models.convert s3://bucket/runs/exp1/pretrain/checkpoint_2025-01-01_00-00-00.000000

The old file is read with `torch.load(weights_only=True)`, torch's restricted unpickler that builds
tensors and plain values only and refuses anything else (such as a pickle that would run code), so
converting a file of unknown origin runs nothing from it. `model.pt` is left in place; rayapp reads
the new files from then on.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence

import pyarrow.fs as pafs
import torch

from rayapp.errors import RayappError
from rayapp.models.checkpoint import FORMAT, LEGACY_FILE, POLICY_FILE, write_checkpoint
from rayapp.storage import Location, exists, read_bytes, resolve, storage_errors

__all__ = ["convert_checkpoint", "convert_tree", "main"]


def convert_checkpoint(folder: str) -> str:
    """Rewrite one old checkpoint folder in the current format; returns the folder's URI."""
    loc = resolve(folder)
    src = loc.join(LEGACY_FILE)
    try:
        payload = torch.load(io.BytesIO(read_bytes(src)), map_location="cpu", weights_only=True)
    except RayappError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's restricted unpickler refusing the file, or a damaged one
        raise RayappError(
            f"{src.uri}: refused, not an old rayapp checkpoint of tensors and plain values "
            f"({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != "rayapp.policy/1":
        raise RayappError(f"{src.uri}: not an old rayapp policy checkpoint (rayapp.policy/1)")
    header = {k: payload[k] for k in ("spec", "frames", "game", "config")}
    header["meta"] = payload.get("meta", {})
    return write_checkpoint(loc.uri, header, payload["state_dict"])


def _legacy_folders(loc: Location) -> list[str]:
    with storage_errors(loc.uri):
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, recursive=True, allow_not_found=True))
    folders = [
        i.path.rsplit("/", 1)[0] for i in infos if i.type == pafs.FileType.File and i.base_name == LEGACY_FILE
    ]
    return sorted(loc.join(f[len(loc.path) :]).uri if f != loc.path else loc.uri for f in folders)


def convert_tree(path: str) -> list[str]:
    """Convert the checkpoint at `path`, or every old checkpoint below it (a run folder)."""
    loc = resolve(path)
    folders = [loc.uri] if exists(loc.join(LEGACY_FILE)) else _legacy_folders(loc)
    if not folders:
        raise RayappError(f"no {LEGACY_FILE} at or below {loc.uri}: nothing to convert")
    done = []
    for f in folders:
        if not exists(resolve(f).join(POLICY_FILE)):
            done.append(convert_checkpoint(f))
    return done


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rayapp.models.convert", description=__doc__.split("\n")[0])
    ap.add_argument("path", nargs="+", help="a checkpoint folder or a run folder (local, s3://, gs://)")
    args = ap.parse_args(argv)
    try:
        for p in args.path:
            for f in convert_tree(p):
                print(f"converted {f} to {FORMAT}")
    except RayappError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
