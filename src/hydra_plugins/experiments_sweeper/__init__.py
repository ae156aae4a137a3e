"""Our Optuna sweeper for Hydra (``-m hydra/sweeper=optuna``); Hydra finds it in the hydra_plugins namespace."""
