"""Manifests shared by the API tests: a valid base and the bad variants, each with the exact field
path and a message fragment a user must see."""

from __future__ import annotations

import copy
from typing import Any, Callable

BASE: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "job-a", "namespace": "team-a"},
    "spec": {
        "technique": "lora",
        "objective": "instruction",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "datasets": [{"name": "chat", "uri": "s3://data/chat/train.jsonl", "format": "messages"}],
        "lora": {"rank": 16},
        "output": {"uri": "s3://kubetune/job-a/"},
    },
}


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A mutation that sets spec.<path> (dots and [i]) to value."""

    def mutate(doc: dict) -> None:
        node: Any = doc
        parts = []
        for part in path.split("."):
            while "[" in part:
                name, rest = part.split("[", 1)
                if name:
                    parts.append(name)
                parts.append(int(rest.split("]", 1)[0]))
                part = rest.split("]", 1)[1]
            if part:
                parts.append(part)
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value

    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *head, last = path.split(".")
        node = doc
        for part in head:
            node = node[part]
        del node[last]

    return mutate


def _spec(**fields: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        doc["spec"].update(fields)

    return mutate


def _both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        for m in mutations:
            m(doc)

    return mutate


PREF_DS = {"name": "prefs", "uri": "s3://data/prefs.jsonl", "format": "preference"}
PROMPT_DS = {"name": "prompts", "uri": "s3://data/prompts.jsonl", "format": "prompt"}
TEXT_DS = {"name": "corpus", "uri": "s3://data/corpus/", "format": "text"}

# (id, mutation, expected field path, message fragment, cross_field)
# cross_field: True where the CRD enforces it with a CEL rule (rather than a per-field schema keyword).
BAD: list[tuple[str, Callable[[dict], None], str, str, bool]] = [
    # unknown fields
    ("typo-learningrate", _set("spec.hyperparameters", {"learningrate": 0.1}), "spec.hyperparameters.learningrate", "did you mean 'learningRate'", False),
    ("typo-spec-field", _spec(techniqe="lora"), "spec.techniqe", "did you mean 'technique'", False),
    ("unknown-lora-field", _set("spec.lora", {"rank": 8, "rnak": 2}), "spec.lora.rnak", "unknown field", False),
    ("unknown-top-level", _set("extra", 1), "extra", "unknown field", False),
    ("unknown-dataset-field", _set("spec.datasets[0].path", "x"), "spec.datasets[0].path", "unknown field", False),
    # enums
    ("bad-technique", _spec(technique="lora2"), "spec.technique", "must be one of", False),
    ("bad-objective", _spec(objective="chat"), "spec.objective", "must be one of", False),
    ("bad-format", _set("spec.datasets[0].format", "chat"), "spec.datasets[0].format", "must be one of", False),
    ("bad-precision", _set("spec.hyperparameters", {"precision": "fp8"}), "spec.hyperparameters.precision", "must be one of", False),
    ("bad-scheduler", _set("spec.hyperparameters", {"lrScheduler": "cosine_with_restarts"}), "spec.hyperparameters.lrScheduler", "must be one of", False),
    ("bad-quant-bits", _both(_spec(technique="qlora"), _set("spec.quantization", {"bits": 3})), "spec.quantization.bits", "4 or 8", False),
    ("bad-quant-type", _both(_spec(technique="qlora"), _set("spec.quantization", {"type": "int4"})), "spec.quantization.type", "must be one of", False),
    ("bad-pref-algorithm", _both(_spec(objective="preference", preference={"algorithm": "ppo"}), _set("spec.datasets", [PREF_DS])), "spec.preference.algorithm", "must be one of", False),
    ("bad-rl-algorithm", _both(_spec(objective="rlhf", rlhf={"algorithm": "ppo"}), _set("spec.datasets", [PREF_DS, PROMPT_DS])), "spec.rlhf.algorithm", "must be one of", False),
    ("bad-toleration-operator", _set("spec.resources", {"tolerations": [{"key": "gpu", "operator": "In"}]}), "spec.resources.tolerations[0].operator", "must be one of", False),
    # types
    ("rank-string", _set("spec.lora", {"rank": "16"}), "spec.lora.rank", "must be an integer (got '16')", False),
    ("rank-float", _set("spec.lora", {"rank": 16.5}), "spec.lora.rank", "must be an integer", False),
    ("lr-string", _set("spec.hyperparameters", {"learningRate": "2e-4"}), "spec.hyperparameters.learningRate", "must be a number", False),
    ("packing-string", _set("spec.hyperparameters", {"packing": "yes"}), "spec.hyperparameters.packing", "must be true or false", False),
    ("datasets-not-list", _spec(datasets={"uri": "s3://data/x.jsonl"}), "spec.datasets", "must be a list", False),
    ("model-not-mapping", _spec(model="hf://a/b"), "spec.model", "must be a mapping", False),
    ("columns-not-strings", _set("spec.datasets[0].columns", {"messages": 3}), "spec.datasets[0].columns.messages", "must be a string", False),
    # required
    ("missing-technique", _delete("spec.technique"), "spec.technique", "required", False),
    ("missing-model-uri", _spec(model={}), "spec.model.uri", "required", False),
    ("missing-dataset-format", _set("spec.datasets[0]", {"uri": "s3://data/x.jsonl"}), "spec.datasets[0].format", "required", False),
    ("empty-datasets", _spec(datasets=[]), "spec.datasets", "at least 1 item", False),
    # bounds
    ("rank-zero", _set("spec.lora", {"rank": 0}), "spec.lora.rank", "must be >= 1 (got 0)", False),
    ("alpha-negative", _set("spec.lora", {"alpha": -1}), "spec.lora.alpha", "must be > 0", False),
    ("dropout-one", _set("spec.lora", {"dropout": 1.0}), "spec.lora.dropout", "must be < 1", False),
    ("lr-zero", _set("spec.hyperparameters", {"learningRate": 0}), "spec.hyperparameters.learningRate", "must be > 0", False),
    ("batch-zero", _set("spec.hyperparameters", {"batchSize": 0}), "spec.hyperparameters.batchSize", "must be >= 1", False),
    ("epochs-negative", _set("spec.hyperparameters", {"epochs": -1}), "spec.hyperparameters.epochs", "must be > 0", False),
    ("warmup-one", _set("spec.hyperparameters", {"warmupRatio": 1.0}), "spec.hyperparameters.warmupRatio", "must be < 1", False),
    ("seq-too-short", _set("spec.hyperparameters", {"maxSeqLength": 8}), "spec.hyperparameters.maxSeqLength", "must be >= 16", False),
    ("weight-zero", _set("spec.datasets[0].weight", 0), "spec.datasets[0].weight", "must be > 0", False),
    ("eval-fraction-big", _set("spec.datasets[0].evalFraction", 0.9), "spec.datasets[0].evalFraction", "must be <= 0.5", False),
    ("keep-zero", _set("spec.output.keepCheckpoints", 0), "spec.output.keepCheckpoints", "must be >= 1", False),
    ("checkpoint-zero", _set("spec.output.checkpointEverySteps", 0), "spec.output.checkpointEverySteps", "must be >= 1", False),
    ("nodes-zero", _spec(nodes=0), "spec.nodes", "must be >= 1", False),
    ("gpus-negative", _set("spec.resources", {"gpus": -1}), "spec.resources.gpus", "must be >= 0", False),
    ("backoff-negative", _spec(backoffLimit=-1), "spec.backoffLimit", "must be >= 0", False),
    ("virtual-tokens-zero", _both(_spec(technique="prompt-tuning", promptTuning={"virtualTokens": 0}), _delete("spec.lora")), "spec.promptTuning.virtualTokens", "must be >= 1", False),
    ("generations-one", _both(_spec(objective="rlhf", rlhf={"numGenerations": 1}), _set("spec.datasets", [PREF_DS, PROMPT_DS])), "spec.rlhf.numGenerations", "must be >= 2", False),
    ("string-too-long", _spec(image="registry.example/" + "x" * 4096), "spec.image", "allows at most 4096 characters", False),
    ("too-many-tolerations", _set("spec.resources", {"tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(65)]}), "spec.resources.tolerations", "allows at most 64 items", False),
    ("node-selector-too-big", _set("spec.resources", {"nodeSelector": {f"k{i}": "v" for i in range(65)}}), "spec.resources.nodeSelector", "allows at most 64 entries (got 65)", False),
    ("too-many-datasets", _spec(datasets=[{"name": f"d{i}", "uri": f"s3://data/{i}.jsonl", "format": "messages"} for i in range(17)]), "spec.datasets", "at most 16 items", False),
    # Kubernetes' own rules for what the child Job, Service and pods carry
    ("toleration-empty", _set("spec.resources", {"tolerations": [{}]}), "spec.resources.tolerations[0].operator", "must be Exists when key is empty", True),
    ("toleration-exists-with-value", _set("spec.resources", {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "a100"}]}), "spec.resources.tolerations[0].value", "must be empty when operator is Exists", True),
    ("toleration-seconds-without-noexecute", _set("spec.resources", {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}]}), "spec.resources.tolerations[0].tolerationSeconds", "needs effect NoExecute", True),
    ("toleration-key-with-space", _set("spec.resources", {"tolerations": [{"key": "gpu type", "operator": "Exists"}]}), "spec.resources.tolerations[0].key", "must be a label key", False),
    ("toleration-value-with-space", _set("spec.resources", {"tolerations": [{"key": "gpu", "value": "a 100"}]}), "spec.resources.tolerations[0].value", "must be a label value", False),
    ("node-selector-key-with-space", _set("spec.resources", {"nodeSelector": {"gpu type": "a100"}}), "spec.resources.nodeSelector", "'gpu type' must be a label key", True),
    ("node-selector-key-two-slashes", _set("spec.resources", {"nodeSelector": {"a.io/b/c": "x"}}), "spec.resources.nodeSelector", "must be a label key", True),
    ("node-selector-value-with-space", _set("spec.resources", {"nodeSelector": {"zone": "eu west"}}), "spec.resources.nodeSelector.zone", "must be a label value", False),
    ("node-selector-value-too-long", _set("spec.resources", {"nodeSelector": {"zone": "z" * 64}}), "spec.resources.nodeSelector.zone", "at most 63 characters", False),
    ("quantity-fractional-exponent", _set("spec.resources", {"memory": "1e3.5"}), "spec.resources.memory", "Kubernetes quantity", False),
    ("quantity-capital-k", _set("spec.resources", {"cpu": "1K"}), "spec.resources.cpu", "Kubernetes quantity", False),
    ("gpu-resource-unprefixed", _set("spec.resources", {"gpuResourceName": "gpu"}), "spec.resources.gpuResourceName", "native resource", False),
    ("gpu-resource-kubernetes-io", _set("spec.resources", {"gpuResourceName": "kubernetes.io/gpu"}), "spec.resources.gpuResourceName", "native resource", True),
    ("gpu-resource-quota-prefix", _set("spec.resources", {"gpuResourceName": "requests.nvidia.com/gpu"}), "spec.resources.gpuResourceName", "must not start with 'requests.'", True),
    ("gpu-resource-name-too-long", _set("spec.resources", {"gpuResourceName": "nvidia.com/" + "g" * 64}), "spec.resources.gpuResourceName", "no more than 63 characters", True),
    ("queue-name-too-long", _spec(queueName="q" * 64), "spec.queueName", "at most 63 characters", False),
    ("queue-name-not-dns", _spec(queueName="Team_A"), "spec.queueName", "a Kueue LocalQueue name", False),
    ("multi-node-name-starts-with-digit", _both(_spec(nodes=2), _set("metadata.name", "7b-lora")), "metadata.name", "must start with a letter when spec.nodes > 1", True),
    # URIs
    ("uri-no-scheme", _set("spec.model.uri", "Qwen/Qwen2.5-0.5B"), "spec.model.uri", "must be a URI with a scheme", False),
    ("uri-bad-scheme", _set("spec.model.uri", "gs://bucket/model/"), "spec.model.uri", "unsupported URI scheme 'gs://'", False),
    ("uri-bad-bucket", _set("spec.output.uri", "s3://Bad_Bucket/x/"), "spec.output.uri", "not a valid S3 URI", False),
    ("uri-relative-file", _set("spec.model.uri", "file://models/x"), "spec.model.uri", "file:///absolute/path", False),
    ("uri-output-hf", _set("spec.output.uri", "hf://org/out"), "spec.output.uri", "output must be s3://", False),
    ("uri-dataset-txt", _set("spec.datasets[0].uri", "s3://data/chat/train.txt"), "spec.datasets[0].uri", "unsupported data file type '.txt'", False),
    ("uri-dataset-hf-model", _set("spec.datasets[0].uri", "hf://org/name"), "spec.datasets[0].uri", "hf://datasets/org/name", False),
    ("uri-model-hf-dataset", _set("spec.model.uri", "hf://datasets/org/name"), "spec.model.uri", "not a model", False),
    ("endpoint-not-url", _set("spec.output.endpoint", "minio:9000"), "spec.output.endpoint", "http:// or https:// URL", False),
    # quantities and names
    ("cpu-bad", _set("spec.resources", {"cpu": "eight"}), "spec.resources.cpu", "Kubernetes quantity", False),
    ("memory-bad-unit", _set("spec.resources", {"memory": "64GB"}), "spec.resources.memory", "Kubernetes quantity", False),
    ("memory-zero", _set("spec.resources", {"memory": "0Gi"}), "spec.resources.memory", "positive quantity", False),
    ("cpu-negative", _set("spec.resources", {"cpu": "-2"}), "spec.resources.cpu", "positive quantity", False),
    ("secret-name-bad", _set("spec.output.credentialsSecret", "S3_Creds"), "spec.output.credentialsSecret", "a Secret name", False),
    ("gpu-resource-bad", _set("spec.resources", {"gpuResourceName": "nvidia.com/gpu!"}), "spec.resources.gpuResourceName", "extended resource name", False),
    ("name-uppercase", _set("metadata.name", "Job-A"), "metadata.name", "DNS label", False),
    ("name-too-long", _set("metadata.name", "a" * 51), "metadata.name", "at most 50 characters", False),
    ("task-name-bad", _set("spec.datasets[0].name", "Chat Data"), "spec.datasets[0].name", "lowercase letters", False),
    ("target-modules-bad", _set("spec.lora", {"targetModules": "q_proj, v_proj"}), "spec.lora.targetModules", "comma-separated", False),
    ("early-stop-metric", _both(_set("spec.datasets[0].evalFraction", 0.1), _set("spec.evaluation", {"earlyStopping": {"metric": "loss"}})), "spec.evaluation.earlyStopping.metric", "eval_loss", False),
    # cross-field rules (the CRD carries each as CEL)
    ("lora-section-with-full", _spec(technique="full"), "spec.lora", "only allowed when spec.technique is lora or qlora", True),
    ("quantization-with-lora", _spec(quantization={"bits": 4}), "spec.quantization", "only allowed when spec.technique is qlora", True),
    ("adapter-section-with-lora", _spec(adapter={"bottleneckSize": 8}), "spec.adapter", "only allowed when spec.technique is adapter", True),
    ("prefix-section-with-lora", _spec(prefixTuning={}), "spec.prefixTuning", "only allowed when spec.technique is prefix-tuning", True),
    ("prompt-section-with-lora", _spec(promptTuning={"virtualTokens": 4}), "spec.promptTuning", "only allowed when spec.technique is prompt-tuning", True),
    ("classification-section-wrong-objective", _spec(classification={"labels": ["a", "b"]}), "spec.classification", "only allowed when spec.objective is classification", True),
    ("text-data-for-rlhf", _both(_spec(objective="rlhf", rlhf={"rewardModel": {"uri": "hf://org/rm"}}), _set("spec.datasets", [PROMPT_DS, TEXT_DS])), "spec.datasets[1].format", "objective rlhf needs format preference or prompt", True),
    ("messages-for-preference", _spec(objective="preference"), "spec.datasets[0].format", "objective preference needs format preference", True),
    ("fe-section-with-lora", _spec(featureExtraction={}), "spec.featureExtraction", "only allowed when spec.technique is feature-extraction", True),
    ("preference-section-wrong-objective", _spec(preference={"beta": 0.2}), "spec.preference", "only allowed when spec.objective is preference", True),
    ("rlhf-section-wrong-objective", _spec(rlhf={}), "spec.rlhf", "only allowed when spec.objective is rlhf", True),
    ("preference-data-for-causal-lm", _both(_spec(objective="causal-lm"), _set("spec.datasets", [PREF_DS])), "spec.datasets[0].format", "objective causal-lm needs format text", True),
    ("text-data-for-instruction", _set("spec.datasets", [TEXT_DS]), "spec.datasets[0].format", "objective instruction needs format messages or prompt-completion", True),
    ("messages-for-classification", _both(_spec(objective="classification")), "spec.datasets[0].format", "needs format classification", True),
    ("rlhf-without-reward", _both(_spec(objective="rlhf"), _set("spec.datasets", [PROMPT_DS])), "spec.rlhf.rewardModel.uri", "needs a reward model", True),
    ("rlhf-without-prompts", _both(_spec(objective="rlhf"), _set("spec.datasets", [PREF_DS])), "spec.datasets", "at least one dataset of format prompt", True),
    ("rlhf-batch-not-multiple", _both(_spec(objective="rlhf", rlhf={"numGenerations": 3}), _set("spec.datasets", [PREF_DS, PROMPT_DS])), "spec.rlhf.numGenerations", "= 8 must be a multiple of numGenerations (3)", True),
    ("rlhf-batch-with-gpus", _both(_spec(objective="rlhf", rlhf={"numGenerations": 8}, hyperparameters={"batchSize": 2}, resources={"gpus": 2}), _set("spec.datasets", [PREF_DS, PROMPT_DS])), "spec.rlhf.numGenerations", "= 4 must be a multiple of numGenerations (8)", True),
    ("lm-head-lora-with-dpo", _both(_spec(objective="preference", lora={"targetModules": "q_proj,lm_head"}), _set("spec.datasets", [PREF_DS])), "spec.lora.targetModules", "lm_head cannot carry LoRA", True),
    ("duplicate-dataset-names", _set("spec.datasets", [{"uri": "s3://data/a.jsonl", "format": "messages"}, {"uri": "s3://data/b.jsonl", "format": "messages"}]), "spec.datasets[1].name", "duplicate dataset name 'default'", True),
    ("columns-wrong-field", _set("spec.datasets[0].columns", {"text": "body"}), "spec.datasets[0].columns.text", "not a field of format messages", True),
    ("eval-uri-and-fraction", _both(_set("spec.datasets[0].evalUri", "s3://data/e.jsonl"), _set("spec.datasets[0].evalFraction", 0.1)), "spec.datasets[0].evalFraction", "either evalUri or evalFraction", True),
    ("early-stopping-no-eval", _set("spec.evaluation", {"earlyStopping": {}}), "spec.evaluation.earlyStopping", "needs evaluation data", True),
    ("merge-with-prompt-tuning", _both(_spec(technique="prompt-tuning"), _delete("spec.lora"), _set("spec.output.mergeAdapter", True)), "spec.output.mergeAdapter", "only lora and qlora", True),
    ("prefix-tuning-rlhf", _both(_spec(technique="prefix-tuning", objective="rlhf"), _delete("spec.lora"), _set("spec.datasets", [PREF_DS, PROMPT_DS])), "spec.technique", "cannot be used with objective rlhf", True),
    ("labels-vs-num-labels", _both(_spec(technique="feature-extraction", objective="classification", featureExtraction={"numLabels": 3}, classification={"labels": ["a", "b"]}), _delete("spec.lora"), _set("spec.datasets", [{"uri": "s3://data/x.csv", "format": "classification"}])), "spec.classification.labels", "names 2 classes but spec.featureExtraction.numLabels is 3", True),
    ("labels-duplicate", _both(_spec(objective="classification", classification={"labels": ["a", "a"]}), _set("spec.datasets", [{"uri": "s3://data/x.csv", "format": "classification"}])), "spec.classification.labels", "unique", False),
]
