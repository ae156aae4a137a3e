"""Lightning's Trainer at a plain loop's speed.

Why this module exists. On the small models this project is about, Lightning's fixed cost per
training step (about 30 hook dispatches, the optimizer closure, progress counters and the batch
transfer: some 0.4 ms on a 2-core CPU) costs as much as the step itself, and Lightning's
maintainers won't remove it. Keras met the same problem with ``steps_per_execution``: several
optimizer steps per call into the framework. :class:`Trainer` does that on Lightning's own loop.
The train loader hands Lightning *chunks* of K consecutive batches, and one Lightning training
step runs all K optimizer steps. The last batch of each chunk goes through Lightning's automatic
optimisation as usual; the K - 1 before it are stepped here, with what matters of Lightning's
per-step work kept:

- the same arithmetic in the same order (so weights, optimizer state, ``history.csv`` and test
  metrics are bit-identical to ``steps_per_execution=1`` on a deterministic CPU run);
- the step counter (``trainer.global_step`` counts optimizer steps), step-interval schedulers,
  gradient clipping (``configure_gradient_clipping``), AMP loss scaling and gradient averaging
  under DDP;
- the per-step hooks that callbacks rely on (``on_before_zero_grad``, ``on_before_backward``,
  ``on_after_backward``, ``on_before_optimizer_step``), called only on the callbacks that
  override them, and step checkpoints (``ModelCheckpoint(every_n_train_steps=N)``) on the exact
  step, inside a chunk when needed;
- batch-level hooks (``on_train_batch_start`` / ``end``, progress bars, ``log_every_n_steps``)
  run once per chunk, as Keras's ``on_train_batch_*`` do with ``steps_per_execution``;
- ``self.log(..., on_epoch=True)`` in ``training_step`` is summed here exactly as Lightning sums
  it and handed to Lightning once per epoch, since ``self.log`` itself costs more than a small
  model's step.

Nothing here is needed by a task, model or data module: a :class:`~experiments.tasks.Task` is a
plain LightningModule, and ``lightning.Trainer`` runs it unchanged. A module that steps its own
way (manual optimisation, its own ``optimizer_step``, ``backward`` or batch hooks), gradient
accumulation, mid-epoch validation, or a loader that is not an in-memory one, fall back to one
step per Lightning step, with one line saying so.

The package, one concern per module: :mod:`~experiments.engine.tuning` (the one decider of
``auto``), :mod:`~experiments.engine.fused` (the chunks and their steps),
:mod:`~experiments.engine.epoch_logs` (the epoch's sums), :mod:`~experiments.engine.process`
(process tricks, undone after each fit), :mod:`~experiments.engine.trainer` (the Trainer),
:mod:`~experiments.engine.checkpointing` (checkpoints written by time) and
:mod:`~experiments.engine.tensorboard`. The readable reference loop that all of this must match
is the plain one in ``scripts/bench_mnist.py``. Every use of a library's private attribute, here
and elsewhere in the package, is tagged ``# private: <library> <versions tested>``
(``tests/test_private_uses.py`` lists them against the bounds in ``pyproject.toml``).

``experiments.engine.Trainer``, ``ModelCheckpoint`` and ``TensorBoardLogger`` are the names that
configs (and the configs inside older checkpoints) build.
"""

from experiments.engine.checkpointing import ModelCheckpoint
from experiments.engine.tensorboard import TensorBoardLogger
from experiments.engine.trainer import Trainer

__all__ = ["ModelCheckpoint", "TensorBoardLogger", "Trainer"]
