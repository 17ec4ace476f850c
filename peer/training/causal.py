"""Causal language models on instructions: the tokens of prompt and answer, and how a model is scored.

Tokens. A prompt is rendered with the tokenizer's chat template (``add_generation_prompt``), or, for a
tokenizer without one, with a plain ``### Instruction: / ### Response:`` template; the answer follows,
closed by the tokenizer's end token (``eos_token_id``; SmolLM2-Instruct's is its end-of-turn token),
so that a fine-tuned model learns to stop. A model whose chat turns end with another token than its
``eos`` (Gemma's ``<end_of_turn>``) learns to stop at ``eos`` instead. The loss is taken on the answer
tokens only (``Encoded.answer_starts``). An example longer than ``max_length`` keeps its answer (cut to
leave at least ``MIN_PROMPT_TOKENS`` of its prompt) and loses the start of its prompt; a warning counts
such examples.

Scores (``CausalEvaluator.evaluate``):

- ``accuracy``: with a closed answer set, the share of validation prompts whose most likely candidate
  answer (sum of the log-probabilities of its tokens, end token included, the way lm-evaluation-harness
  scores multiple choice) is the right one; without one, the share of answer tokens predicted right,
  teacher-forced (TRL's ``mean_token_accuracy``).
- ``answer_loss`` and ``perplexity``: the mean negative log-likelihood per answer token of the right
  answers, and its exponential.

The candidates are scored without repeating the prompt: one forward pass over the prompts, whose key/
value cache is then repeated once per candidate for a second pass over the (short) candidate tokens.

``generations``: greedy answers to a few fixed validation prompts, for a person to read.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from peer.data.instructions import ASSISTANT, SYSTEM, USER, Example, Message
from peer.errors import ConfigError
from peer.training.precision import Precision, autocast
from peer.training.tokenizer import ByteTokenizer, Encoded

log = logging.getLogger("tadlora.training")

IGNORE_INDEX = -100  # the label of a token the loss skips (Hugging Face's convention)
MIN_PROMPT_TOKENS = 8
EVAL_BATCH_SIZE = 16  # prompts per scoring pass; a pass holds batch x candidates x length x vocabulary logits
GENERATION_SAMPLES = 3
MAX_NEW_TOKENS = 32
PLAIN_HEADERS = {"system": "### System:\n", "user": "### Instruction:\n", ASSISTANT: "### Response:\n"}


def end_token_id(tokenizer) -> int:
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ConfigError("the model's tokenizer has no end token: a causal LM needs one to end its answers")
    return int(tokenizer.eos_token_id)


def pad_token_id(tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else end_token_id(tokenizer)


def _plain_prompt(prompt: Sequence[Message]) -> str:
    return "".join(f"{PLAIN_HEADERS[m.role]}{m.content}\n\n" for m in prompt) + PLAIN_HEADERS[ASSISTANT]


def _render_chat(tokenizer, prompt: Sequence[Message]) -> str:
    """The prompt through the chat template. Some templates refuse a system message (Gemma's, Mistral's
    strict alternation): then the system message opens the first user message instead."""
    import jinja2

    def render(messages: Sequence[Message]) -> str:
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    try:
        return render(prompt)
    except (jinja2.TemplateError, ValueError) as exc:
        refusal = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        if len(prompt) > 1 and prompt[0].role == SYSTEM and prompt[1].role == USER:
            try:
                return render([Message(USER, f"{prompt[0].content}\n\n{prompt[1].content}"), *prompt[2:]])
            except (jinja2.TemplateError, ValueError):
                pass
        raise ConfigError(f"model: its chat template refuses a prompt of the data ({refusal})") from None


def prompt_token_ids(tokenizer, prompts: Sequence[Sequence[Message]]) -> list[list[int]]:
    """Every prompt rendered (chat template or plain) and tokenized, ready for the answer to follow."""
    if isinstance(tokenizer, ByteTokenizer):
        return [[tokenizer.bos_token_id, *tokenizer.ids(_plain_prompt(p))] for p in prompts]
    if getattr(tokenizer, "chat_template", None):
        texts = [_render_chat(tokenizer, p) for p in prompts]
        return list(tokenizer(texts, add_special_tokens=False)["input_ids"])  # the template has its specials
    return list(tokenizer([_plain_prompt(p) for p in prompts])["input_ids"])


def answer_token_ids(tokenizer, answers: Sequence[str]) -> list[list[int]]:
    """Each answer's tokens, closed by the end token."""
    end = end_token_id(tokenizer)
    if isinstance(tokenizer, ByteTokenizer):
        return [[*tokenizer.ids(a), end] for a in answers]
    return [[*ids, end] for ids in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]


def join(prompt: list[int], answer: list[int], max_length: int) -> tuple[list[int], int]:
    """Prompt and answer within ``max_length`` tokens (see the module docstring); returns the ids and
    where the answer starts."""
    answer = answer[: max(1, max_length - min(len(prompt), MIN_PROMPT_TOKENS))]
    prompt = prompt[-(max_length - len(answer)) :] if len(prompt) + len(answer) > max_length else prompt
    return [*prompt, *answer], len(prompt)


def encode_instructions(tokenizer, examples: Sequence[Example], max_length: int) -> Encoded:
    """Tokenize every example once: its ids, its category (``labels``) and where its answer starts."""
    prompts = prompt_token_ids(tokenizer, [e.prompt for e in examples])
    distinct = sorted({e.completion for e in examples})
    answers = dict(zip(distinct, answer_token_ids(tokenizer, distinct)))
    joined = [join(p, answers[e.completion], max_length) for p, e in zip(prompts, examples)]
    cut = sum(len(p) + len(answers[e.completion]) > max_length for p, e in zip(prompts, examples))
    if cut:
        log.warning(
            "%d of %d examples are longer than --max-length %d tokens: their prompts lose their start (answers "
            "longer than the limit lose their end); raise --max-length to keep them whole",
            cut,
            len(examples),
            max_length,
        )
    return Encoded(
        [ids for ids, _ in joined],
        None,
        np.asarray([e.category for e in examples], dtype=np.int64),
        pad_token_id(tokenizer),
        [start for _, start in joined],
    )


def answer_labels(ids: torch.Tensor, mask: torch.Tensor, answer_starts: Sequence[int]) -> torch.Tensor:
    """The labels of a right-padded batch: the token ids on answer tokens, ``IGNORE_INDEX`` elsewhere."""
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    for row, start in enumerate(answer_starts):
        labels[row, :start] = IGNORE_INDEX
    return labels


ANSWER_LABELS = "answer_labels"  # the key of a training batch's labels: the last positions only


def collate_answers(data: Encoded, indices, device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch whose answers end together: left-padded, with position ids that skip the
    padding, and labels for the last ``span`` positions only (the longest answer of the batch).

    Why: the loss needs the output layer's logits at the answer tokens alone. An instruction model's
    output layer is large (SmolLM2: 49,152 x 576, a fifth of its compute per token), and answers are a
    few tokens of a prompt's fifty; aligned at the end, one slice of the last positions holds them all
    (``answer_loss``). The loss equals that of the right-padded batch (``answer_labels``)."""
    assert data.answer_starts is not None, "instructions carry where their answers start"
    rows = [data.input_ids[i] for i in indices]
    ids, mask = _padded(rows, data.pad_id, device, left=True)
    answer_lengths = [len(row) - data.answer_starts[i] for row, i in zip(rows, indices)]
    span = min(max(answer_lengths), ids.shape[1] - 1)  # the first token of a sequence has no prediction
    labels = ids[:, ids.shape[1] - span :].clone()
    for row, length in enumerate(answer_lengths):
        labels[row, : max(0, span - length)] = IGNORE_INDEX
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, ANSWER_LABELS: labels}


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean cross-entropy over the answer tokens of a ``collate_answers`` batch."""
    labels = batch[ANSWER_LABELS]
    span = labels.shape[1]
    inputs = {k: v for k, v in batch.items() if k != ANSWER_LABELS}
    logits = model(**inputs, logits_to_keep=span + 1).logits[:, :-1]  # position t predicts token t + 1
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


@dataclass
class ScoringSet:
    """The validation examples as the evaluator needs them: encoded, the prompts and answers as text
    (for the generations' record), and, for a closed answer set, the candidates and the right one."""

    data: Encoded
    prompts: list[str]
    answers: list[str]
    candidates: list[list[int]] | None = None  # token ids, end token included
    gold: np.ndarray | None = None  # index of each example's right candidate


def scoring_set(tokenizer, examples: Sequence[Example], candidates, max_length: int) -> ScoringSet:
    data = encode_instructions(tokenizer, examples, max_length)
    prompts = ["\n".join(m.content for m in e.prompt) for e in examples]
    answers = [e.completion for e in examples]
    if candidates is None:
        return ScoringSet(data, prompts, answers)
    candidate_ids = answer_token_ids(tokenizer, candidates)
    gold = np.asarray([list(candidates).index(a) for a in answers], dtype=np.int64)
    return ScoringSet(data, prompts, answers, candidate_ids, gold)


def _cache_of(output):
    """The key/value cache of a forward pass: ``cache`` from transformers 5.24 on, ``past_key_values`` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _cache_argument(model, cache) -> dict:
    """The cache as the base model's forward names it (``cache``, or ``past_key_values`` before 5.24)."""
    base = model.get_base_model()
    return {"cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values": cache}


def _padded(rows: list[list[int]], pad: int, device, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and attention mask of ``rows`` padded to the longest, on the left (answers or the next token
    aligned at the end) or on the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[n, span] = torch.tensor(row, dtype=torch.long)
        mask[n, span] = 1
    return ids.to(device), mask.to(device)


class CausalEvaluator:
    """Scores an adapter of a causal LM on one validation set (see the module docstring); the same
    interface as the classification ``Evaluator``: ``accuracy`` and ``evaluate``."""

    def __init__(
        self,
        scoring: ScoringSet,
        tokenizer,
        device: torch.device,
        precision: Precision = Precision.FP32,
        batch_size: int = EVAL_BATCH_SIZE,
        samples: int = GENERATION_SAMPLES,
    ) -> None:
        self.scoring, self.tokenizer, self.device, self.precision = scoring, tokenizer, device, precision
        data = scoring.data
        assert data.answer_starts is not None, "instructions carry where their answers start"
        self.prompts = [ids[:start] for ids, start in zip(data.input_ids, data.answer_starts)]
        by_length = np.argsort([len(ids) for ids in data.input_ids], kind="stable")
        self.batches = [by_length[s : s + batch_size] for s in range(0, len(data), batch_size)]
        self.sample_indices = list(range(min(samples, len(data))))

    def accuracy(self, adapter) -> float:
        return self.evaluate(adapter)["accuracy"]

    @torch.inference_mode()
    def evaluate(self, adapter) -> dict[str, float]:
        adapter.activate()
        model = adapter.owner.peft_model
        model.eval()
        if self.scoring.candidates is not None:
            return self._closed_set(model)
        return self._teacher_forced(model)

    def _closed_set(self, model) -> dict[str, float]:
        assert self.scoring.candidates is not None and self.scoring.gold is not None
        candidates, gold = self.scoring.candidates, self.scoring.gold
        lengths = torch.tensor([len(c) for c in candidates], dtype=torch.float64)
        correct, nll, tokens = 0, 0.0, 0.0
        for batch in self.batches:
            scores = self._candidate_log_probs(model, [self.prompts[i] for i in batch], candidates).double().cpu()
            right = torch.as_tensor(gold[batch])
            correct += int((scores.argmax(-1) == right).sum())
            nll -= float(scores.gather(1, right[:, None]).sum())
            tokens += float(lengths[right].sum())
        return self._scores(correct / max(1, len(gold)), nll / max(tokens, 1.0))

    def _candidate_log_probs(self, model, prompts: list[list[int]], candidates: list[list[int]]) -> torch.Tensor:
        """(prompts, candidates): the summed log-probability of each candidate's tokens after each prompt."""
        pad, n_prompts, n_cand = pad_token_id(self.tokenizer), len(prompts), len(candidates)
        ids, mask = _padded(prompts, pad, self.device, left=True)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cand, cand_mask = _padded(candidates, pad, self.device)
        with autocast(self.device, self.precision):
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), -1)  # the next token after each prompt
        scores = first[:, cand[:, 0]]
        if cand.shape[1] == 1:
            return scores
        cache = _cache_of(out)
        cache.batch_repeat_interleave(n_cand)  # the prompts' keys and values, once per candidate
        inputs = cand[:, :-1].repeat(n_prompts, 1)
        follow_mask = cand_mask[:, :-1].repeat(n_prompts, 1)
        attention = torch.cat([mask.repeat_interleave(n_cand, 0), follow_mask], 1)
        follow_positions = (
            positions[:, -1:].repeat_interleave(n_cand, 0) + 1 + torch.arange(inputs.shape[1], device=self.device)
        )
        with autocast(self.device, self.precision):
            logits = model(
                input_ids=inputs,
                attention_mask=attention,
                position_ids=follow_positions,
                **_cache_argument(model, cache),
            ).logits
        log_probs = torch.log_softmax(logits.float(), -1)
        targets = cand[:, 1:].repeat(n_prompts, 1)
        picked = log_probs.gather(-1, targets[..., None])[..., 0] * cand_mask[:, 1:].repeat(n_prompts, 1)
        return scores + picked.sum(-1).view(n_prompts, n_cand)

    def _teacher_forced(self, model) -> dict[str, float]:
        data = self.scoring.data
        assert data.answer_starts is not None
        right, nll, tokens = 0, 0.0, 0
        for batch in self.batches:
            ids, mask = _padded([data.input_ids[i] for i in batch], data.pad_id, self.device)
            labels = answer_labels(ids, mask, [data.answer_starts[i] for i in batch])[:, 1:]
            with autocast(self.device, self.precision):
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            counted = labels != IGNORE_INDEX
            right += int(((logits.argmax(-1) == labels) & counted).sum())
            nll += float(torch.nn.functional.cross_entropy(logits[counted], labels[counted], reduction="sum"))
            tokens += int(counted.sum())
        return self._scores(right / max(1, tokens), nll / max(1, tokens))

    @staticmethod
    def _scores(accuracy: float, answer_loss: float) -> dict[str, float]:
        return {"accuracy": accuracy, "answer_loss": answer_loss, "perplexity": math.exp(min(answer_loss, 50.0))}

    @torch.inference_mode()
    def generations(self, adapter) -> list[dict[str, str]]:
        """The model's greedy answers to the first few validation prompts, beside the expected ones."""
        adapter.activate()
        model = adapter.owner.peft_model
        model.eval()
        records = []
        for i in self.sample_indices:
            prompt = torch.tensor([self.prompts[i]], dtype=torch.long, device=self.device)
            with autocast(self.device, self.precision):
                out = model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    eos_token_id=end_token_id(self.tokenizer),
                    pad_token_id=pad_token_id(self.tokenizer),
                )
            answer = self.tokenizer.decode(out[0, prompt.shape[1] :].tolist(), skip_special_tokens=True).strip()
            records.append({"prompt": self.scoring.prompts[i], "expected": self.scoring.answers[i], "answer": answer})
        return records
