"""Our parallel launcher for Hydra multiruns (``hydra/launcher=parallel``, the default); Hydra finds it
in the hydra_plugins namespace."""
