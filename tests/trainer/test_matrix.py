"""Every supported technique x objective trains a tiny Llama through the real entrypoint.

Each pair writes a FineTuneJob (file:// model, data and output), runs it in-process with
`kubetune_trainer.entrypoint.main` and then checks, against the model the recipe starts from (the
technique applied to the base, seeded like the recipe seeds it):

(a) the objective's measure improves, computed directly on the models (no Trainer), on the rows it
    trained on (each dataset is one full batch, so every step sees the same rows):
    causal-lm: token cross-entropy of the texts; instruction: cross-entropy of the answer tokens;
    classification: cross-entropy of the labels; preference: log p(chosen) - log p(rejected);
    rlhf: the policy's expected reward for its (one-token) completions of the training prompts,
    computed exactly over the vocabulary with the reward model the run published in
    final/reward-model/ (which must sit beside the policy in final/, with its completion marker);
    where the trainer's first logged loss is the same quantity, it must equal the "before" value;
(b) only the intended parameters changed (frozen ones bit-identical) and the saved weights hold only
    the technique's parameters;
(c) final/ reloads with the technique's loader (AutoModelFor*, PeftModel, the bottleneck loader) and
    the reloaded model is the one measured as "after".

The numbers are collected in `training_results` and printed as a table at the end of the session
(tests/trainer/conftest.py). Unsupported pairs (kubetune.api.constants.UNSUPPORTED_COMBINATIONS)
are not run.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from tests.fixtures import TECHNIQUE_MUST_CHANGE, TECHNIQUE_SECTIONS, TECHNIQUE_TRAINS

from kubetune.api.constants import UNSUPPORTED_COMBINATIONS, Objective, Technique
from kubetune.manifests import load_job
from kubetune_trainer.techniques import module_for

pytestmark = pytest.mark.slow

# Every value of the enums: a new technique or objective is in the matrix at once (and fails until the
# per-technique tables of tests/fixtures.py know it).
TECHNIQUES = [t.value for t in Technique]
OBJECTIVES = [o.value for o in Objective]
PAIRS = [
    (technique, objective)
    for objective in OBJECTIVES
    for technique in TECHNIQUES
    if (Technique(technique), Objective(objective)) not in UNSUPPORTED_COMBINATIONS
]
PEFT = tuple(t for t in TECHNIQUES if module_for(t).PEFT)

# Learning rates: soft prompts, prefixes and bottlenecks steer a frozen random model and need larger
# steps than weight updates to move it in a dozen steps.
LEARNING_RATE = {
    "full": 3e-3,
    "lora": 1e-2,
    "qlora": 1e-2,
    "feature-extraction": 1e-2,
    "adapter": 3e-2,
    "prompt-tuning": 5e-2,
    "prefix-tuning": 5e-2,
}
# Pairs whose run is steadier with another rate: the adapter's new classification head diverges at
# 3e-2; GRPO on the full model moves the reward little at 3e-3 in a few dozen steps.
LEARNING_RATE_FOR_PAIR = {("adapter", "classification"): 1e-2, ("full", "rlhf"): 1e-2}
STEPS = 12
RLHF_STEPS = 40  # per stage: reward model, then policy
# GRPO's gradient is noisy: 16 completions of one prompt per step give LoRA/adapters a steady signal.
RLHF_BATCH = 16
# One sampled token per completion: the policy's expected reward can then be computed exactly (no
# sampling noise), so a small but real rise is measurable for every technique.
COMPLETION_TOKENS = 1

# A new classification head trains with every technique (PEFT: modules_to_save).
HEAD = r".*score\.modules_to_save\.default\.weight$|^score\.weight$"
WORDS = "the cat dog fox owl red blue green park river is near and".split()
ANIMAL_COLORS = {"cat": "red", "dog": "blue", "fox": "green", "owl": "gold", "bee": "pink", "cow": "gray"}


# --------------------------------------------------------------------------- data


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.as_uri()


def text_rows() -> list[dict]:
    from kubetune_trainer.tiny import sample_corpus

    return [{"text": t} for t in sample_corpus(8, seed=5)]


def instruction_rows() -> list[dict]:
    animals = list(ANIMAL_COLORS) + ["cat", "dog"]
    return [{"prompt": f"what color is the {a} ?", "completion": f" the {a} is {ANIMAL_COLORS[a]} ."} for a in animals]


def classification_rows() -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i in range(8):
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
        rows.append({"text": f"{body} {('great', 'terrible')[i % 2]}", "label": ("positive", "negative")[i % 2]})
    return rows


CHOSEN, REJECTED = " yes , good", " no , bad"


def preference_rows() -> list[dict]:
    rng = random.Random(2)
    return [
        {
            "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))),
            "chosen": CHOSEN,
            "rejected": REJECTED,
        }
        for _ in range(8)
    ]


GOOD, BAD = "yes good great positive".split(), "no bad terrible negative".split()


def reward_preference_rows(n: int, seed: int) -> list[dict]:
    """Completions of "yes"-words are chosen over completions of other words (as in test_rlhf)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = [rng.choice(WORDS + GOOD) for _ in range(3)] + [rng.choice(GOOD)]
        rejected = [rng.choice(WORDS + BAD) for _ in range(4)]
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
        rows.append({"prompt": prompt, "chosen": " " + " ".join(chosen), "rejected": " " + " ".join(rejected)})
    return rows


def rl_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(n)]


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory) -> dict[str, dict]:
    """objective -> (spec.datasets, the rows the measure is computed on)."""
    root = tmp_path_factory.mktemp("matrix-data")
    texts, instructions = text_rows(), instruction_rows()
    labelled, preferences = classification_rows(), preference_rows()
    prompts = rl_prompts(16, seed=3)
    return {
        "causal-lm": {
            "datasets": [{"name": "text", "uri": write_jsonl(root / "text.jsonl", texts), "format": "text"}],
            "rows": texts,
        },
        "instruction": {
            "datasets": [
                {"name": "qa", "uri": write_jsonl(root / "qa.jsonl", instructions), "format": "prompt-completion"}
            ],
            "rows": instructions,
        },
        "classification": {
            "datasets": [
                {"name": "sentiment", "uri": write_jsonl(root / "cls.jsonl", labelled), "format": "classification"}
            ],
            "rows": labelled,
        },
        "preference": {
            "datasets": [
                {"name": "pref", "uri": write_jsonl(root / "pref.jsonl", preferences), "format": "preference"}
            ],
            "rows": preferences,
        },
        "rlhf": {
            "datasets": [
                {
                    "name": "prefs",
                    "uri": write_jsonl(root / "rm.jsonl", reward_preference_rows(64, seed=1)),
                    "format": "preference",
                },
                {
                    "name": "prompts",
                    "uri": write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts]),
                    "format": "prompt",
                },
            ],
            "rows": prompts,
        },
    }


# --------------------------------------------------------------------------- measures (directly on a model)


def _padded(tokenizer, sequences: list[list[int]], labels: list[list[int]]):
    width = max(len(s) for s in sequences)
    pad = tokenizer.pad_token_id
    left = tokenizer.padding_side == "left"

    def fill(row, value):
        padding = [value] * (width - len(row))
        return padding + row if left else row + padding

    return {
        "input_ids": torch.tensor([fill(s, pad) for s in sequences]),
        "attention_mask": torch.tensor([fill([1] * len(s), 0) for s in sequences]),
        "labels": torch.tensor([fill(row, -100) for row in labels]),
    }


def lm_loss(model, tokenizer, rows) -> float:
    """Mean cross-entropy of every token of the texts (BOS ... EOS), as causal-lm trains them."""
    sequences = [tokenizer(r["text"])["input_ids"] + [tokenizer.eos_token_id] for r in rows]
    model.eval()
    with torch.no_grad():
        return model(**_padded(tokenizer, sequences, sequences)).loss.item()


def answer_loss(model, tokenizer, rows) -> float:
    """Mean cross-entropy of the completion tokens (and EOS) given the prompt."""
    sequences, labels = [], []
    for r in rows:
        prompt = tokenizer(r["prompt"])["input_ids"]
        answer = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    model.eval()
    with torch.no_grad():
        return model(**_padded(tokenizer, sequences, labels)).loss.item()


def label_loss(model, tokenizer, rows) -> float:
    names = list(model.config.id2label.values()) if hasattr(model, "config") else None
    names = names or list(model.get_base_model().config.id2label.values())
    enc = tokenizer([r["text"] for r in rows], return_tensors="pt", padding=True)
    labels = torch.tensor([names.index(r["label"]) for r in rows])
    model.eval()
    with torch.no_grad():
        logits = model(**enc).logits
    return torch.nn.functional.cross_entropy(logits.float(), labels).item()


def logprob_gap(model, tokenizer, rows) -> float:
    """Mean of log p(chosen | prompt) - log p(rejected | prompt)."""
    model.eval()

    def completion_logprob(prompt: str, completion: str) -> float:
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + completion)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        logps = torch.log_softmax(logits[-len(ids) :].float(), -1)  # soft prompts add leading positions
        return sum(logps[i - 1, ids[i]].item() for i in range(len(prompt_ids), len(ids)))

    gaps = [completion_logprob(r["prompt"], r["chosen"]) - completion_logprob(r["prompt"], r["rejected"]) for r in rows]
    return sum(gaps) / len(gaps)


def expected_reward(policy, tokenizer, reward_model, reward_tokenizer, prompts) -> tuple[float, float]:
    """Mean over `prompts` of the policy's expected reward for its one-token completion, exactly:
    sum over the vocabulary of p(token | prompt) x reward(prompt + token), scored as GRPO/RLOO score
    completions (decoded alone without special tokens, appended to the prompt, no special tokens added).
    Also the spread of the reward over the vocabulary (mean over prompts of its standard deviation)."""
    policy.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    with torch.no_grad():
        probs = torch.softmax(policy(**enc).logits[:, -1].float(), -1)  # temperature 1.0, as in the spec
        vocab = probs.shape[-1]
        completions = tokenizer.batch_decode([[t] for t in range(vocab)], skip_special_tokens=True)
        texts = [prompt + completion for prompt in prompts for completion in completions]
        scored = reward_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        rewards = reward_model(**scored).logits[:, 0].float().view(len(prompts), vocab)
    return (probs * rewards).sum(-1).mean().item(), rewards.std(-1).mean().item()


MEASURES = {
    "causal-lm": ("token loss", lm_loss),
    "instruction": ("answer loss", answer_loss),
    "classification": ("label loss", label_loss),
    "preference": ("logp gap", logprob_gap),
    "rlhf": ("exp. reward", None),  # needs the published reward model: measured after the run
}
HIGHER_IS_BETTER = {"preference", "rlhf"}


# --------------------------------------------------------------------------- models before and after


def task_of(objective: str) -> str:
    return "sequence-classification" if objective == "classification" else "causal-lm"


def initial_model(spec, objective: str, base_dir: Path):
    """The model the recipe starts training from: same seed, same loader, same technique."""
    from transformers import set_seed

    from kubetune_trainer.modeling import load_for_training

    set_seed(spec.hyperparameters.seed)
    if objective == "classification":
        return load_for_training(spec, base_dir, "sequence-classification", label_names=["negative", "positive"])
    return load_for_training(spec, base_dir, "causal-lm")


def reload_final(technique: str, task: str, final: Path, base_dir: Path, spec):
    """final/ loaded the way a user would for this technique (adapters onto the base in base_dir)."""
    from transformers import AutoTokenizer

    if module_for(technique).PEFT:
        # The adapter names its base by the folder it was trained from (file:// models are used in place).
        assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)
    model = module_for(technique).load_result(final, base_dir, task, spec)
    return model, AutoTokenizer.from_pretrained(final)


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def saved_weight_names(technique: str, final: Path) -> list[str]:
    from safetensors import safe_open

    file = {"adapter": "bottleneck_adapter.safetensors"}.get(
        technique, "adapter_model.safetensors" if technique in PEFT else "model.safetensors"
    )
    with safe_open(str(final / file), "pt") as fh:
        return list(fh.keys())


def check_parameters(technique: str, task: str, before: dict, after_model, final: Path) -> int:
    """(b): the changed parameters are the technique's (and the head's); returns how many changed."""
    # PEFT keeps the new head's random initial weights as `original_module` beside the trained copy; it
    # is not saved (a reload draws it afresh) and not used while the adapter is active.
    before = {n: p for n, p in before.items() if ".original_module." not in n}
    after = {n: p for n, p in after_model.named_parameters() if ".original_module." not in n}
    assert after.keys() == before.keys(), sorted(after.keys() ^ before.keys())[:6]
    intended = re.compile(TECHNIQUE_TRAINS[technique] + ("|" + HEAD if task == "sequence-classification" else ""))
    changed = {n for n, p in after.items() if p.shape != before[n].shape or not torch.equal(p.detach(), before[n])}
    frozen_changed = sorted(n for n in changed if not intended.match(n))
    assert not frozen_changed, f"{technique}: frozen parameters changed: {frozen_changed[:5]}"
    must = [n for n in before if re.match(TECHNIQUE_MUST_CHANGE[technique], n)]
    if task == "sequence-classification":
        must += [n for n in before if re.match(HEAD, n)]
    assert must, f"{technique}: no parameter named like {TECHNIQUE_MUST_CHANGE[technique]}"
    unchanged = sorted(n for n in must if n not in changed)
    assert not unchanged, f"{technique}: trained parameters unchanged: {unchanged[:5]}"
    if technique == "full":
        assert changed == set(before), f"full: unchanged {sorted(set(before) - changed)[:5]}"

    # The saved file holds the technique's weights only (no copy of the frozen base).
    saved = saved_weight_names(technique, final)
    if technique in ("lora", "qlora"):
        assert all(".lora_" in n or (task != "causal-lm" and ".score." in n) for n in saved), saved[:6]
    elif technique in ("prompt-tuning", "prefix-tuning"):
        assert all(n == "prompt_embeddings" or (task != "causal-lm" and ".score." in n) for n in saved), saved[:6]
    elif technique == "adapter":
        assert all(".kubetune_adapters." in n or n.startswith("score.") for n in saved), saved[:6]
    else:
        assert set(saved) == set(before), sorted(set(saved) ^ set(before))[:6]
    return len(changed)


def logged(metrics_file: Path, key: str) -> list[float]:
    return [r[key] for r in map(json.loads, metrics_file.read_text().splitlines()) if key in r]


# --------------------------------------------------------------------------- the matrix


def job_sections(technique: str, objective: str) -> dict:
    rlhf = objective == "rlhf"
    sections = {
        "technique": technique,
        "objective": objective,
        "hyperparameters": {
            "maxSteps": RLHF_STEPS if rlhf else STEPS,
            "batchSize": RLHF_BATCH if rlhf else 8,
            "learningRate": LEARNING_RATE_FOR_PAIR.get((technique, objective), LEARNING_RATE.get(technique, 1e-2)),
            "maxSeqLength": 48,
            "seed": 3,
        },
        "output": {"checkpointEverySteps": 1000, "keepCheckpoints": 1},
        **TECHNIQUE_SECTIONS[technique],
    }
    if objective == "preference":
        sections["preference"] = {"algorithm": "dpo", "beta": 0.1}
    if rlhf:
        sections["rlhf"] = {
            "algorithm": "grpo",
            "numGenerations": RLHF_BATCH,
            "maxCompletionLength": COMPLETION_TOKENS,
            "beta": 0.0,
            "temperature": 1.0,
        }
    return sections


@pytest.mark.parametrize("technique, objective", PAIRS, ids=[f"{t}-x-{o}" for t, o in PAIRS])
def test_pair_trains_through_the_entrypoint(
    technique, objective, tiny_llama_dir, matrix_data, write_job, tmp_path, training_results
):
    from kubetune_trainer.entrypoint import main
    from kubetune_trainer.objectives import rlhf

    data = matrix_data[objective]
    job = write_job(
        tiny_llama_dir, data["datasets"], name=f"{technique}-{objective}", **job_sections(technique, objective)
    )
    spec = load_job(job).spec.resolved()
    task = task_of(objective)
    name, measure = MEASURES[objective]

    start = initial_model(spec, objective, tiny_llama_dir)
    before_params = parameters(start.model)
    if measure is not None:
        before = measure(start.model, start.tokenizer, data["rows"])

    out = tmp_path / "out"
    started = time.monotonic()
    assert main([str(job), "--output", out.as_uri() + "/"]) == 0
    seconds = time.monotonic() - started

    final = out / "final"
    after_model, after_tokenizer = reload_final(technique, task, final, tiny_llama_dir, spec)
    if objective == "rlhf":
        # Both the policy and the reward model stage 1 published (marker last) are in final/.
        assert (final / "reward-model" / rlhf.COMPLETE_MARKER).is_file()
        ctx = SimpleNamespace(spec=spec, model_dir=tiny_llama_dir, reward_model_dir=None)
        scorer = rlhf.load_reward_model(ctx, final / "reward-model")
        scorer[0].eval()
        before, spread = expected_reward(start.model, start.tokenizer, *scorer, data["rows"])
        after, _ = expected_reward(after_model, after_tokenizer, *scorer, data["rows"])
    else:
        after = measure(after_model, after_tokenizer, data["rows"])
    changed = check_parameters(technique, task, before_params, after_model, final)

    # What the run itself logged: the first and last training loss (full batches: every step sees the
    # same rows), or for rlhf the mean sampled reward of the first and last five policy steps.
    if objective == "rlhf":
        series = logged(out / "metrics.jsonl", "reward")
        trainer_log = f"reward {sum(series[:5]) / 5:.3f} -> {sum(series[-5:]) / 5:.3f}"
    else:
        series = logged(out / "metrics.jsonl", "loss")
        trainer_log = f"loss {series[0]:.3f} -> {series[-1]:.3f}"
    if objective in ("causal-lm", "instruction", "classification"):
        # The recipe started from the model measured as "before" (seeded initialisation), and the
        # measure is the trainer's own loss (for prompt-tuning too: each row's first token is a target
        # after the soft prompt, and the trainer counts it; see techniques/prompt_tuning.py).
        assert series[0] == pytest.approx(before, rel=1e-3), f"first logged loss {series[0]:.4f}, measured {before:.4f}"
    training_results.append(
        {
            "technique": technique,
            "objective": objective,
            "measure": name,
            "before": before,
            "after": after,
            "logged": trainer_log,
            "changed": changed,
            "seconds": seconds,
        }
    )
    # Required gains, about a third of the smallest measured (prompt-tuning x causal-lm: 2% of the loss;
    # prompt-tuning x preference: +0.77; lora x rlhf: 3% of the reward's spread over the vocabulary).
    message = f"{technique} x {objective}: {name} {before:.4f} -> {after:.4f}"
    if objective == "rlhf":
        assert after - before > 0.01 * spread, message + f" (reward spread {spread:.3f})"
    elif objective == "preference":
        assert after > before + 0.25, message
    else:
        assert after < 0.99 * before, message
