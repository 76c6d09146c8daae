"""One typed config tree.

Defaults live in `sections` (one dataclass per section, each field with its help text), the tree
and its cross-key checks in `tree`, reading YAML and `--set` overrides in `loader`. A YAML file in
``configs/`` holds only what differs from these defaults (with a comment saying why), and
``--set section.key=value`` overrides either. Unknown keys and wrong types fail loudly with the
key's full path; the resolved tree is saved next to every output so a run can be rebuilt from it.
"""

from rayapp.config.lam import LamConfig, VideoConfig
from rayapp.config.loader import (
    absolute,
    absolute_paths,
    config_from_dict,
    config_to_dict,
    describe_keys,
    dump_config,
    load_config,
    path_keys,
    set_key,
)
from rayapp.config.sections import (
    ArcadeConfig,
    DataConfig,
    EnvConfig,
    EvalConfig,
    FinetuneConfig,
    InputsConfig,
    ModelConfig,
    PlayConfig,
    PretrainConfig,
    RayConfig,
    RecordConfig,
    RunConfig,
    SweepConfig,
)
from rayapp.config.tree import Config

__all__ = [
    "absolute",
    "absolute_paths",
    "Config",
    "RunConfig",
    "RayConfig",
    "EnvConfig",
    "InputsConfig",
    "ArcadeConfig",
    "PlayConfig",
    "DataConfig",
    "RecordConfig",
    "ModelConfig",
    "PretrainConfig",
    "FinetuneConfig",
    "EvalConfig",
    "SweepConfig",
    "VideoConfig",
    "LamConfig",
    "config_from_dict",
    "config_to_dict",
    "describe_keys",
    "dump_config",
    "load_config",
    "path_keys",
    "set_key",
]
