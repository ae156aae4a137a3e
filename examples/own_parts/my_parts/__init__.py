"""A user's own parts for the experiments framework: a model, a data set, a task and a callback.

Nothing here is part of the framework: this package lives in its own folder and reaches the
framework through configs in ../my_conf (python -m experiments.train --config-dir my_conf ...).
"""
