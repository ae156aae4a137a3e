"""Our SLURM launcher for Hydra multiruns (``hydra/launcher=slurm``); Hydra finds it in the
hydra_plugins namespace."""
