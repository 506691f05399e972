"""Tasks (labelled text for classification, plain text for perplexity) and their batches."""

from lowrank.data import hub_text  # registers the hf: task names
from lowrank.data.batches import batches, encode, num_batches
from lowrank.data.tasks import NAMED_TASKS, SPLITS, Task, TaskError, hub_reachable, load_task

__all__ = [
    "NAMED_TASKS",
    "SPLITS",
    "Task",
    "TaskError",
    "batches",
    "encode",
    "hub_text",
    "hub_reachable",
    "load_task",
    "num_batches",
]
