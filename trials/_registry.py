"""Finding a task by name: a built-in one, or ``package.module:attr`` importable by the user."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from trials._errors import TaskError
from trials._task import Task
from trials.tasks import (
    DigitsTask,
    Mnist1dLargeTask,
    Mnist1dSmallTask,
    Mnist1dTask,
    TransformerLinearTask,
    TransformerTask,
)

BUILTIN_TASKS: dict[str, Callable[[], Task]] = {
    DigitsTask.name: DigitsTask,
    Mnist1dTask.name: Mnist1dTask,
    Mnist1dLargeTask.name: Mnist1dLargeTask,
    Mnist1dSmallTask.name: Mnist1dSmallTask,
    TransformerTask.name: TransformerTask,
    TransformerLinearTask.name: TransformerLinearTask,
}


def load_task(ref: str) -> Task:
    """The task named by ``ref``: a built-in name (``"digits"``) or ``"package.module:attr"``
    where ``attr`` is a Task subclass (instantiated with no arguments), a Task instance, or a
    zero-argument callable returning a Task."""
    if ref in BUILTIN_TASKS:
        return BUILTIN_TASKS[ref]()
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(
            f"task reference {ref!r} must be a built-in task ({', '.join(sorted(BUILTIN_TASKS))}) "
            "or 'package.module:attr'. Fix: write e.g. 'mypkg.tasks:MyTask'."
        )
    module = _import(ref, module_name)
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            found = sorted(
                n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Task)
            )
            raise TaskError(
                f"task reference {ref!r}: attribute missing: module {module_name!r} has no "
                f"attribute {attr!r} (Task classes there: {found or 'none'}). Fix: correct the "
                "name after ':'."
            )
        obj = getattr(obj, part)
    return _to_task(ref, obj)


def _import(ref: str, module_name: str) -> object:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise TaskError(
                f"task reference {ref!r}: module not found: {module_name!r} cannot be imported. "
                "Fix: install the package or add its directory to PYTHONPATH (Ray workers need "
                "it too), and check the spelling before ':'."
            ) from exc
        raise TaskError(
            f"task reference {ref!r}: module {module_name!r} was found but imports "
            f"{missing!r}, which is missing. Fix: install {missing!r} where trials run."
        ) from exc
    except Exception as exc:
        raise TaskError(
            f"task reference {ref!r}: importing module {module_name!r} raised "
            f"{type(exc).__name__}: {exc}. Fix: make the module importable without errors."
        ) from exc


def _to_task(ref: str, obj: object) -> Task:
    what = "calling it"
    if isinstance(obj, Task):
        return obj
    if isinstance(obj, type) and issubclass(obj, Task):
        what = "instantiating the Task class with no arguments"
    elif not callable(obj):
        raise TaskError(
            f"task reference {ref!r}: not a Task: it names a {type(obj).__name__}, but it must "
            "be a Task subclass, a Task instance or a zero-argument function returning a Task. "
            "Fix: point the reference at one of those."
        )
    try:
        task = obj()
    except Exception as exc:
        raise TaskError(
            f"task reference {ref!r}: {what} raised {type(exc).__name__}: {exc}. Fix: make it "
            "work with no arguments (and implement every abstract method of Task)."
        ) from exc
    if not isinstance(task, Task):
        raise TaskError(
            f"task reference {ref!r}: not a Task: {what} returned a {type(task).__name__}, but "
            "it must return a trials.Task. Fix: subclass trials.Task."
        )
    return task
