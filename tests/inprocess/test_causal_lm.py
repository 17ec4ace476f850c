"""Causal LMs with the tiny random Llama: answer-only loss, candidate scoring, adapters PEFT loads and
generates with, the simulator end to end, and the task-type settings."""

import json

import numpy as np
import pytest
import torch

from peer.config import CAUSAL_LM_DEFAULTS, load_config
from peer.core.run_setup import build_model, build_trainer, evaluator_for, prepare_data
from peer.data.instructions import Example, user_prompt
from peer.errors import ConfigError, DataError
from peer.sim import simulate
from peer.training.causal import (
    IGNORE_INDEX,
    MIN_PROMPT_TOKENS,
    answer_loss,
    collate_answers,
    encode_instructions,
    join,
)
from peer.training.tokenizer import ByteTokenizer
from peer.training.trainer import collate

TINY_CAUSAL = dict(
    task_type="causal-lm",
    model="tiny-llama",
    task="synthetic",
    peers=2,
    rounds=4,
    local_steps=2,
    batch_size=8,
    max_length=128,  # the byte tokenizer's examples are about 120 tokens long: none is cut
    eval_every=2,
    eval_samples=24,
    learning_rate=1e-2,
    references="none",
    device="cpu",
)


@pytest.fixture
def causal_cfg():
    return load_config(overrides=dict(TINY_CAUSAL))


def test_the_loss_is_taken_on_the_answer_tokens_only(causal_cfg):
    tokenizer = ByteTokenizer()
    examples = [Example(user_prompt("Say yes."), "yes", 0), Example(user_prompt("A longer prompt here."), "no", 1)]
    data = encode_instructions(tokenizer, examples, max_length=96)
    for ids, start, answer in zip(data.input_ids, data.answer_starts, ["yes", "no"]):
        assert ids[start:] == [*tokenizer.ids(answer), tokenizer.eos_token_id]  # the answer, then the end token
        assert tokenizer.decode(ids[:start]).endswith("### Response:\n")
    batch = collate(data, [0, 1], torch.device("cpu"))
    labels, ids = batch["labels"], batch["input_ids"]
    for row, start in enumerate(data.answer_starts):
        length = len(data.input_ids[row])
        assert (labels[row, :start] == IGNORE_INDEX).all() and (labels[row, length:] == IGNORE_INDEX).all()
        assert (labels[row, start:length] == ids[row, start:length]).all()
    model = build_model(causal_cfg, 1, ["a"])
    peft_model = model.peft_model
    with torch.no_grad():
        loss = peft_model(**batch).loss
        logits = peft_model(input_ids=ids, attention_mask=batch["attention_mask"]).logits
    shifted = labels[:, 1:]
    counted = shifted != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][counted], shifted[counted])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_the_training_loss_on_answers_aligned_at_the_end_equals_the_right_padded_loss(causal_cfg):
    # the trainer left-pads and computes logits at the answer positions only: the same loss and the
    # same gradients as Hugging Face's loss over the whole right-padded batch
    data = prepare_data(causal_cfg)
    model = build_model(causal_cfg, data.task.num_labels, ["a"])
    adapter = model["a"]
    build_trainer(causal_cfg, adapter, data.shards[0], 0).train_round(0, frozenset({"A", "B"}), 2)  # B != 0
    adapter.activate(frozenset({"A", "B"}))
    peft_model = model.peft_model
    peft_model.eval()  # no dropout: the two layouts draw different masks
    indices = list(range(8))

    def loss_and_grads(loss_fn):
        peft_model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in adapter.parameters()]

    ours = loss_and_grads(lambda: answer_loss(peft_model, collate_answers(data.shards[0], indices, model.device)))
    hf = loss_and_grads(lambda: peft_model(**collate(data.shards[0], indices, model.device)).loss)
    assert ours[0] == pytest.approx(hf[0], rel=1e-5)
    for mine, theirs in zip(ours[1], hf[1]):
        assert torch.allclose(mine, theirs, atol=1e-6, rtol=1e-4)


def test_a_long_example_keeps_its_answer_and_loses_the_start_of_its_prompt():
    ids, start = join(list(range(100)), [7, 8, 2], max_length=20)
    assert len(ids) == 20 and ids[start:] == [7, 8, 2] and ids[:start] == list(range(83, 100))
    ids, start = join([1, 2, 3], list(range(50)), max_length=20)
    assert ids[:start] == [1, 2, 3] and ids[start:] == list(range(17))  # the whole prompt, the answer cut
    ids, start = join(list(range(30)), list(range(50)), max_length=20)
    assert len(ids[:start]) == MIN_PROMPT_TOKENS and len(ids) == 20


def test_candidate_scoring_equals_scoring_each_full_sequence(tmp_path):
    # candidates of different lengths: the padded candidate pass over the repeated cache is exercised
    path = tmp_path / "closed.jsonl"
    answers = ["yes", "no, not at all", "maybe so"]
    path.write_text("\n".join(json.dumps({"prompt": f"Is {i} odd?", "completion": answers[i % 3]}) for i in range(60)))
    # fp32: the reference below runs without autocast, and `auto` is bf16 on a CPU that has it (4e-3 apart)
    causal_cfg = load_config(overrides=dict(TINY_CAUSAL, task=f"jsonl:{path}", partition="iid", precision="fp32"))
    data = prepare_data(causal_cfg)
    model = build_model(causal_cfg, data.task.num_labels, ["a"])
    trainer = build_trainer(causal_cfg, model["a"], data.shards[0], 0)
    trainer.train_round(0, frozenset({"A", "B"}), 3)  # B is zero at init: move it so the adapter matters
    evaluator = evaluator_for(causal_cfg, data, model.device)
    assert data.scoring.candidates is not None and len({len(c) for c in data.scoring.candidates}) == 3
    peft_model = model.peft_model
    peft_model.eval()
    prompts = evaluator.prompts[:5]
    with torch.no_grad():
        fast = evaluator._candidate_log_probs(peft_model, prompts, data.scoring.candidates)
        for p, prompt in enumerate(prompts):
            for c, candidate in enumerate(data.scoring.candidates):
                log_probs = torch.log_softmax(peft_model(input_ids=torch.tensor([prompt + candidate])).logits[0], -1)
                slow = sum(float(log_probs[len(prompt) - 1 + k, t]) for k, t in enumerate(candidate))
                assert float(fast[p, c]) == pytest.approx(slow, abs=1e-4)
    scores = evaluator.evaluate(model["a"])
    assert 0 <= scores["accuracy"] <= 1 and scores["perplexity"] == pytest.approx(np.exp(scores["answer_loss"]))


def test_open_answers_are_scored_by_the_answer_tokens_predicted_right(tmp_path):
    path = tmp_path / "open.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Count to {i}.", "completion": f"{i} done"}) for i in range(40)))
    cfg = load_config(overrides=dict(TINY_CAUSAL, task=f"jsonl:{path}", partition="iid"))
    data = prepare_data(cfg)
    assert data.scoring.candidates is None
    model = build_model(cfg, data.task.num_labels, ["a"])
    scores = evaluator_for(cfg, data, model.device).evaluate(model["a"])
    assert 0 <= scores["accuracy"] <= 1 and scores["perplexity"] > 1


def test_an_exported_adapter_loads_with_peft_causal_lm_loader_and_generates(causal_cfg, tmp_path):
    from peft import AutoPeftModelForCausalLM

    data = prepare_data(causal_cfg)
    model = build_model(causal_cfg, data.task.num_labels, ["a"])
    build_trainer(causal_cfg, model["a"], data.shards[0], 0).train_round(0, frozenset({"A", "B"}), 3)
    folder = model["a"].save_pretrained(tmp_path / "adapter")
    assert json.loads((folder / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert json.loads((folder / "tadlora.json").read_text())["task_type"] == "causal-lm"
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(folder))
    loaded.eval()
    ours = model.peft_model
    ours.eval()
    prompt = torch.tensor([data.scoring.data.input_ids[0][: data.scoring.data.answer_starts[0]]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=prompt).logits, ours(input_ids=prompt).logits, atol=1e-5)
    out = loaded.generate(input_ids=prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape[1] > prompt.shape[1]
    generations = evaluator_for(causal_cfg, data, model.device).generations(model["a"])
    assert len(generations) == 3 and {"prompt", "expected", "answer"} <= set(generations[0])


def test_the_simulator_runs_a_causal_lm_with_references_and_writes_generations(tmp_path):
    cfg = load_config(overrides=dict(TINY_CAUSAL, wire_dtype="int8", references="alone,centralized"))
    summary = simulate(cfg, out=tmp_path, progress=False)
    assert set(summary["perplexity"]) == {"peer-00", "peer-01"} and summary["mean_perplexity"] > 1
    assert set(summary["references"]) == {"alone", "centralized"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if "perplexity" in r] == [1, 3]
    generations = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert {g["round"] for g in generations} == {1, 3}
    assert {g["peer"] for g in generations} == {"peer-00", "peer-01", "network-average"}
    assert (tmp_path / "peers" / "peer-00" / "adapter" / "adapter_model.safetensors").is_file()


def test_task_type_brings_its_defaults_and_refuses_models_of_the_other_kind():
    cfg = load_config(overrides={"task_type": "causal-lm"})
    assert {k: getattr(cfg, k) for k in CAUSAL_LM_DEFAULTS} == CAUSAL_LM_DEFAULTS
    assert load_config(overrides={"task_type": "causal-lm", "task": "movie-reviews"}).task == "movie-reviews"
    with pytest.raises(ConfigError, match="model: minilm is a classification model"):
        load_config(overrides={"task_type": "causal-lm", "model": "minilm"})
    with pytest.raises(ConfigError, match="model: tiny-llama is a causal LM"):
        load_config(overrides={"model": "tiny-llama"})
    with pytest.raises(ConfigError, match="train-head: a causal LM has no classification head"):
        load_config(overrides={"task_type": "causal-lm", "train_head": 1})
    with pytest.raises(ConfigError, match="task-type: 'seq2seq' is not one of"):
        load_config(overrides={"task_type": "seq2seq"})


def test_label_skew_over_data_without_categories_names_the_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) for i in range(40)))
    cfg = load_config(overrides=dict(TINY_CAUSAL, task=f"jsonl:{path}"))
    with pytest.raises(ConfigError, match=r"partition: .*two classes.*column 'category'"):
        prepare_data(cfg)


def test_the_daemon_reads_the_task_type_from_its_environment_and_toml(tmp_path):
    from peer.config import load_daemon_config

    run, _ = load_daemon_config(environ={"TADLORA_TASK_TYPE": "causal-lm", "TADLORA_MODEL": "tiny-llama"})
    assert (run.task, run.lora_targets, run.train_head) == ("trec", "q_proj,v_proj", 0)
    toml = tmp_path / "run.toml"
    toml.write_text('task-type = "causal-lm"\nmodel = "tiny-llama"\ntask = "synthetic"\n')
    run, _ = load_daemon_config(toml)
    assert (run.task, run.lora_targets, run.max_length) == ("synthetic", "q_proj,v_proj", 96)


def test_the_testbed_checks_a_causal_data_file_with_the_instruction_reader(tmp_path):
    from peer.core.run_setup import check_task_and_model

    path = tmp_path / "chat.jsonl"
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"messages": chat[:1]}) + "\n")
    with pytest.raises(DataError, match=r"chat\.jsonl:2: 'messages' must be a list of at least two"):
        check_task_and_model(load_config(overrides=dict(TINY_CAUSAL, task=f"jsonl:{path}")))


class _NoSystemRole:
    """A tokenizer whose chat template refuses a system message (as Gemma's does)."""

    chat_template = "{{ no system role }}"

    def apply_chat_template(self, chat, tokenize, add_generation_prompt):
        import jinja2

        if any(m["role"] == "system" for m in chat):
            raise jinja2.TemplateError("System role not supported")
        return "".join(f"<{m['role']}>{m['content']}" for m in chat) + "<assistant>"


def test_a_chat_template_without_a_system_role_gets_the_instruction_in_the_user_message():
    from peer.data.instructions import Message
    from peer.training.causal import _render_chat

    prompt = (Message("system", "Classify."), Message("user", "Where is Rome?"))
    assert _render_chat(_NoSystemRole(), prompt) == "<user>Classify.\n\nWhere is Rome?<assistant>"
    with pytest.raises(ConfigError, match="chat template refuses a prompt of the data"):
        _render_chat(_NoSystemRole(), (Message("system", "x"), Message("system", "y"), Message("user", "z")))
