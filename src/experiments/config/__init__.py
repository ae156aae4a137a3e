"""Everything between a composed Hydra config and live objects: where things are and the resolvers
(:mod:`~experiments.config.paths`), the checks against signatures (:mod:`~experiments.config.checks`)
and the builders (:mod:`~experiments.config.build`)."""

from experiments.config.build import (
    build,
    build_callbacks,
    build_trainer,
    instantiate_group,
    processes_sharing_cores,
    pruning_callbacks,
    settle_auto_settings,
)
from experiments.config.checks import SEED_RANGE, check_added_keys, check_config, check_monitor, check_options
from experiments.config.paths import CONFIG_DIR, IN_CLONE, PACKAGE_DIR, PROJECT_ROOT, data_root, run_directory

__all__ = [
    "CONFIG_DIR",
    "IN_CLONE",
    "PACKAGE_DIR",
    "PROJECT_ROOT",
    "SEED_RANGE",
    "build",
    "build_callbacks",
    "build_trainer",
    "check_added_keys",
    "check_config",
    "check_monitor",
    "check_options",
    "data_root",
    "instantiate_group",
    "processes_sharing_cores",
    "pruning_callbacks",
    "run_directory",
    "settle_auto_settings",
]
