"""objectives.rlhf through run(ctx): a reward model trained from preferences, then GRPO / RLOO against it.

The synthetic preference: completions of "yes"-words are chosen over completions of other words,
so the reward model scores text by its words. The RL stage then has to move the policy's sampled
completions towards what the reward model likes: the mean reward of completions sampled from the
policy (measured directly, not from the trainer's logs) must rise.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tests.trainer.objectives.recipes import WORDS, recipe_context, write_jsonl
from transformers import TrainerCallback

from kubetune_trainer.context import RunContext

pytestmark = pytest.mark.slow

GOOD = "yes good great positive".split()
BAD = "no bad terrible negative".split()


def prompt_text(rng) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))


def preference_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = [rng.choice(WORDS + GOOD) for _ in range(3)] + [rng.choice(GOOD)]
        rejected = [rng.choice(WORDS + BAD) for _ in range(4)]
        rows.append(
            {"prompt": prompt_text(rng), "chosen": " " + " ".join(chosen), "rejected": " " + " ".join(rejected)}
        )
    return rows


def prompt_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": prompt_text(rng)} for _ in range(n)]


class StageRecorder(TrainerCallback):
    """Which stages trained (ctx.set_stage sets `stage`), and the policy's mean reward as it starts."""

    def __init__(self, prompts):
        self.stage = None
        self.stages = []
        self.prompts = prompts
        self.reward_before = None
        self.scorer = None  # (reward model, reward tokenizer), set by the test once known
        self.logged_rewards = []

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.stages.append(self.stage)
        if self.stage == "policy" and self.scorer is not None:
            self.reward_before = mean_reward(model, processing_class, *self.scorer, self.prompts)
            model.train()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.logged_rewards.append(logs["reward"])


def mean_reward(policy, tokenizer, reward_model, reward_tokenizer, prompts, samples=4, max_new_tokens=4) -> float:
    """Mean reward of completions sampled from `policy` for `prompts` (fixed seed)."""
    import torch

    policy.eval()
    torch.manual_seed(1234)
    texts = []
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = policy.generate(
            **enc,
            do_sample=True,
            temperature=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=samples,
            pad_token_id=tokenizer.pad_token_id,
            top_k=0,
            top_p=1.0,
        )
    completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    for i, completion in enumerate(completions):
        texts.append(prompts[i // samples] + completion)
    tokenizer.padding_side = "right"
    scored = reward_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return reward_model(**scored).logits[:, 0].mean().item()


def make_ctx(
    tmp_path: Path,
    model_dir: Path,
    *,
    technique="full",
    algorithm="grpo",
    steps=40,
    lr=5e-3,
    reward_model_dir=None,
    callbacks=(),
    out_name="out",
    with_preferences=True,
) -> RunContext:
    datasets = [
        {"name": "prompts", "uri": write_jsonl(tmp_path / "prompts.jsonl", prompt_rows(64, seed=3)), "format": "prompt"}
    ]
    if with_preferences:
        datasets.insert(
            0,
            {
                "name": "prefs",
                "uri": write_jsonl(tmp_path / "prefs.jsonl", preference_rows(128, seed=1)),
                "format": "preference",
                "evalUri": write_jsonl(tmp_path / "prefs-eval.jsonl", preference_rows(32, seed=2)),
            },
        )
    rlhf = {"algorithm": algorithm, "numGenerations": 4, "maxCompletionLength": 4, "beta": 0.0, "temperature": 1.0}
    if reward_model_dir is not None:
        rlhf["rewardModel"] = {"uri": Path(reward_model_dir).as_uri()}
    extra = {"rlhf": rlhf}
    if technique == "lora":
        extra["lora"] = {"rank": 8, "alpha": 16, "dropout": 0.0}
    return recipe_context(
        tmp_path,
        model_dir,
        objective="rlhf",
        technique=technique,
        datasets=datasets,
        steps=steps,
        lr=lr,
        spec_extra=extra,
        callbacks=callbacks,
        out_name=out_name,
    )


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_llama_dir):
    """Reward model from preferences, then GRPO against it (one run, several tests read it)."""
    from kubetune_trainer.objectives import rlhf

    tmp_path = tmp_path_factory.mktemp("rlhf-grpo")
    prompts = [r["prompt"] for r in prompt_rows(32, seed=9)]
    recorder = StageRecorder(prompts)

    class ScorerFromStage(TrainerCallback):
        """When the policy stage begins, the reward model is the one stage 1 published: load it to score."""

        def on_train_begin(self, args, state, control, **kwargs):
            if recorder.stage == "policy" and recorder.scorer is None:
                model, tok = rlhf.load_reward_model(ctx, ctx.work_dir / "reward-model")
                recorder.scorer = (model.eval(), tok)

    ctx = make_ctx(tmp_path, tiny_llama_dir, steps=60, callbacks=[ScorerFromStage(), recorder])
    recorder.stage = None
    result = rlhf.run(ctx)
    return ctx, result, recorder, prompts


def test_reward_model_is_trained_and_published(grpo_run):
    from kubetune_trainer.objectives import rlhf

    ctx, result, recorder, _ = grpo_run
    assert recorder.stages == ["reward-model", "policy"]
    published = Path(ctx.layout.final_uri[len("file://") :]) / "reward-model"
    assert (published / rlhf.COMPLETE_MARKER).is_file()
    model, tok = rlhf.load_reward_model(ctx, published)
    rows = preference_rows(32, seed=2)
    import torch

    def score(texts):  # as GRPO/RLOO score completions: no special tokens added
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            return model(**enc).logits[:, 0]

    chosen = score([r["prompt"] + r["chosen"] for r in rows])
    rejected = score([r["prompt"] + r["rejected"] for r in rows])
    accuracy = (chosen > rejected).float().mean().item()
    print(f"reward model: eval accuracy {accuracy:.2f}, loss {result.metrics['reward_model/eval_loss']:.3f}")
    assert accuracy >= 0.9


def test_grpo_raises_the_mean_reward(grpo_run):
    ctx, result, recorder, prompts = grpo_run
    after = mean_reward(result.model, result.tokenizer, *recorder.scorer, prompts)
    logged = recorder.logged_rewards
    print(
        f"full x rlhf/grpo: mean reward {recorder.reward_before:.3f} -> {after:.3f} "
        f"(logged: first {logged[0]:.3f}, last {logged[-1]:.3f}); loss {result.metrics.get('train_loss')}"
    )
    assert after > recorder.reward_before + 1.0
    assert "reward" in result.metrics


def test_rloo_with_a_given_reward_model_skips_the_reward_stage(grpo_run, tmp_path, tiny_llama_dir):
    from kubetune_trainer.objectives import rlhf

    first_ctx, _, first_recorder, prompts = grpo_run
    published = Path(first_ctx.layout.final_uri[len("file://") :]) / "reward-model"
    recorder = StageRecorder(prompts)
    recorder.scorer = first_recorder.scorer
    ctx = make_ctx(
        tmp_path,
        tiny_llama_dir,
        algorithm="rloo",
        lr=2e-2,
        reward_model_dir=published,
        callbacks=[recorder],
        with_preferences=False,
    )
    result = rlhf.run(ctx)
    after = mean_reward(result.model, result.tokenizer, *recorder.scorer, prompts)
    print(
        f"full x rlhf/rloo: mean reward {recorder.reward_before:.3f} -> {after:.3f}",
        [round(r, 2) for r in recorder.logged_rewards],
    )
    assert recorder.stages == ["policy"]
    assert not (tmp_path / "out" / "final" / "reward-model").exists()
    assert after > recorder.reward_before + 1.0


def test_a_completed_reward_stage_is_skipped_on_retry(grpo_run, tmp_path, tiny_llama_dir):
    """A retry whose output already holds final/reward-model/ with its marker goes straight to the policy."""
    import shutil

    from kubetune_trainer.objectives import rlhf

    first_ctx, *_ = grpo_run
    published = Path(first_ctx.layout.final_uri[len("file://") :]) / "reward-model"
    shutil.copytree(published, tmp_path / "out" / "final" / "reward-model")
    recorder = StageRecorder([])
    ctx = make_ctx(tmp_path, tiny_llama_dir, steps=2, callbacks=[recorder])
    rlhf.run(ctx)
    assert recorder.stages == ["policy"]


def test_lora_policy_with_grpo(grpo_run, tmp_path, tiny_llama_dir):
    """LoRA x GRPO runs end to end and trains the adapter. (On the random tiny model, whose sampling
    starts near-uniform over ~290 tokens, all-linear LoRA without the output head moves the mean
    reward only slightly in a few dozen steps, so the rise is printed, not asserted.)"""
    from kubetune_trainer.objectives import rlhf

    first_ctx, _, first_recorder, prompts = grpo_run
    published = Path(first_ctx.layout.final_uri[len("file://") :]) / "reward-model"
    recorder = StageRecorder(prompts)
    recorder.scorer = first_recorder.scorer
    ctx = make_ctx(
        tmp_path,
        tiny_llama_dir,
        technique="lora",
        lr=1e-2,
        steps=40,
        reward_model_dir=published,
        callbacks=[recorder],
        with_preferences=False,
    )
    result = rlhf.run(ctx)
    after = mean_reward(result.model, result.tokenizer, *recorder.scorer, prompts)
    print(f"lora x rlhf/grpo: mean reward {recorder.reward_before:.3f} -> {after:.3f}")
    assert recorder.stages == ["policy"] and "reward" in result.metrics
    lora_b = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b)  # B starts at 0: the adapter trained
