"""Data: labelled text tasks, tokenization and the split of a task across peers."""

from peer.data.partition import partition
from peer.data.tasks import TextTask, available_tasks, load_task

__all__ = ["TextTask", "available_tasks", "load_task", "partition"]
