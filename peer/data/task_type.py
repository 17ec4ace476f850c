"""What a run fine-tunes the model for: the one switch between the two families of tasks and models."""

from __future__ import annotations

from enum import StrEnum


class TaskType(StrEnum):
    # a label per text, scored by accuracy (AutoModelForSequenceClassification; movie reviews, GLUE ...)
    CLASSIFICATION = "classification"
    # instructions and their answers, loss on the answer tokens (AutoModelForCausalLM; SmolLM2, Llama ...)
    CAUSAL_LM = "causal-lm"
