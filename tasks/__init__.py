"""Tasks: one file per task (generator and/or loaders), each registered in ``TASKS``."""
from attnbench.tasks.base import TASKS, PreparedData, Task, build_task

__all__ = ["TASKS", "PreparedData", "Task", "build_task"]
