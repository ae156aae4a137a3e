"""Task kinds, registered by name: the one place that maps a data spec's ``task`` to its task module.

A task kind is a :class:`~experiments.tasks.base.Task` subclass that owns everything that differs
between kinds: how it is built from a data spec (:meth:`Task.from_spec`), its metrics
(``Task.metric_names``), its trivial-loss baseline for the diagnosis (:meth:`Task.trivial_loss`), its
prediction format (``predict_step`` and :meth:`Task.describe_predictions`) and its figures
(``Task.plots``: the figure callbacks that draw for it). A new kind is its own file plus one
registration::

    @register_task_kind("ranking")
    class RankingTask(Task):
        metric_names = ("ndcg",)
        ...

and a data module whose spec says ``task="ranking"`` trains with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from experiments.errors import UserError
from experiments.tasks.base import Task

TaskClass = TypeVar("TaskClass", bound="type[Task]")

_KINDS: dict[str, type[Task]] = {}


def register_task_kind(name: str) -> Callable[[TaskClass], TaskClass]:
    """Class decorator: data whose spec says ``task=name`` trains with the decorated Task subclass.

    Registering a name twice replaces the first class (a module imported again re-registers its
    class), so a kind of one's own can also replace a built-in one on purpose.
    """

    def register(cls: TaskClass) -> TaskClass:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task_kind({name!r}) decorates a subclass of experiments.tasks.Task, not {cls!r}")
        cls.kind = name
        _KINDS[name] = cls
        return cls

    return register


def task_kinds() -> dict[str, type[Task]]:
    """The registered kinds, by name (a copy)."""
    return dict(_KINDS)


def task_kind(name: str) -> type[Task]:
    """The Task class registered for ``name``, or one line naming the registered kinds."""
    try:
        return _KINDS[name]
    except KeyError:
        raise UserError(
            f"no task kind {name!r} is registered (registered: {', '.join(sorted(_KINDS))}); register its "
            "Task subclass with @experiments.tasks.register_task_kind(name) in a module that is imported"
        ) from None
