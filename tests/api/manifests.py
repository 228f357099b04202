"""Manifests shared by the API tests: a valid base and the bad variants, each with the exact field
path and a message fragment a user must see."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

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
    (
        "typo-learningrate",
        _set("spec.hyperparameters", {"learningrate": 0.1}),
        "spec.hyperparameters.learningrate",
        "did you mean 'learningRate'",
        False,
    ),
    ("typo-spec-field", _spec(techniqe="lora"), "spec.techniqe", "did you mean 'technique'", False),
    ("unknown-lora-field", _set("spec.lora", {"rank": 8, "rnak": 2}), "spec.lora.rnak", "unknown field", False),
    ("unknown-top-level", _set("extra", 1), "extra", "unknown field", False),
    ("unknown-dataset-field", _set("spec.datasets[0].path", "x"), "spec.datasets[0].path", "unknown field", False),
    # enums
    ("bad-technique", _spec(technique="lora2"), "spec.technique", "must be one of", False),
    ("bad-objective", _spec(objective="chat"), "spec.objective", "must be one of", False),
    ("bad-format", _set("spec.datasets[0].format", "chat"), "spec.datasets[0].format", "must be one of", False),
    (
        "bad-precision",
        _set("spec.hyperparameters", {"precision": "fp8"}),
        "spec.hyperparameters.precision",
        "must be one of",
        False,
    ),
    (
        "bad-scheduler",
        _set("spec.hyperparameters", {"lrScheduler": "cosine_with_restarts"}),
        "spec.hyperparameters.lrScheduler",
        "must be one of",
        False,
    ),
    (
        "bad-quant-bits",
        _both(_spec(technique="qlora"), _set("spec.quantization", {"bits": 3})),
        "spec.quantization.bits",
        "4 or 8",
        False,
    ),
    (
        "bad-quant-type",
        _both(_spec(technique="qlora"), _set("spec.quantization", {"type": "int4"})),
        "spec.quantization.type",
        "must be one of",
        False,
    ),
    (
        "bad-pref-algorithm",
        _both(_spec(objective="preference", preference={"algorithm": "ppo"}), _set("spec.datasets", [PREF_DS])),
        "spec.preference.algorithm",
        "must be one of",
        False,
    ),
    (
        "bad-rl-algorithm",
        _both(_spec(objective="rlhf", rlhf={"algorithm": "ppo"}), _set("spec.datasets", [PREF_DS, PROMPT_DS])),
        "spec.rlhf.algorithm",
        "must be one of",
        False,
    ),
    (
        "bad-toleration-operator",
        _set("spec.resources", {"tolerations": [{"key": "gpu", "operator": "In"}]}),
        "spec.resources.tolerations[0].operator",
        "must be one of",
        False,
    ),
    # types
    ("rank-string", _set("spec.lora", {"rank": "16"}), "spec.lora.rank", "must be an integer (got '16')", False),
    ("rank-float", _set("spec.lora", {"rank": 16.5}), "spec.lora.rank", "must be an integer", False),
    (
        "lr-string",
        _set("spec.hyperparameters", {"learningRate": "2e-4"}),
        "spec.hyperparameters.learningRate",
        "must be a number",
        False,
    ),
    (
        "packing-string",
        _set("spec.hyperparameters", {"packing": "yes"}),
        "spec.hyperparameters.packing",
        "must be true or false",
        False,
    ),
    ("datasets-not-list", _spec(datasets={"uri": "s3://data/x.jsonl"}), "spec.datasets", "must be a list", False),
    ("model-not-mapping", _spec(model="hf://a/b"), "spec.model", "must be a mapping", False),
    (
        "columns-not-strings",
        _set("spec.datasets[0].columns", {"messages": 3}),
        "spec.datasets[0].columns.messages",
        "must be a string",
        False,
    ),
    # required
    ("missing-technique", _delete("spec.technique"), "spec.technique", "required", False),
    ("missing-model-uri", _spec(model={}), "spec.model.uri", "required", False),
    (
        "missing-dataset-format",
        _set("spec.datasets[0]", {"uri": "s3://data/x.jsonl"}),
        "spec.datasets[0].format",
        "required",
        False,
    ),
    ("empty-datasets", _spec(datasets=[]), "spec.datasets", "at least 1 item", False),
    # bounds
    ("rank-zero", _set("spec.lora", {"rank": 0}), "spec.lora.rank", "must be >= 1 (got 0)", False),
    ("alpha-negative", _set("spec.lora", {"alpha": -1}), "spec.lora.alpha", "must be > 0", False),
    ("dropout-one", _set("spec.lora", {"dropout": 1.0}), "spec.lora.dropout", "must be < 1", False),
    (
        "lr-zero",
        _set("spec.hyperparameters", {"learningRate": 0}),
        "spec.hyperparameters.learningRate",
        "must be > 0",
        False,
    ),
    (
        "batch-zero",
        _set("spec.hyperparameters", {"batchSize": 0}),
        "spec.hyperparameters.batchSize",
        "must be >= 1",
        False,
    ),
    (
        "epochs-negative",
        _set("spec.hyperparameters", {"epochs": -1}),
        "spec.hyperparameters.epochs",
        "must be > 0",
        False,
    ),
    (
        "warmup-one",
        _set("spec.hyperparameters", {"warmupRatio": 1.0}),
        "spec.hyperparameters.warmupRatio",
        "must be < 1",
        False,
    ),
    (
        "seq-too-short",
        _set("spec.hyperparameters", {"maxSeqLength": 8}),
        "spec.hyperparameters.maxSeqLength",
        "must be >= 16",
        False,
    ),
    ("weight-zero", _set("spec.datasets[0].weight", 0), "spec.datasets[0].weight", "must be > 0", False),
    (
        "eval-fraction-big",
        _set("spec.datasets[0].evalFraction", 0.9),
        "spec.datasets[0].evalFraction",
        "must be <= 0.5",
        False,
    ),
    ("keep-zero", _set("spec.output.keepCheckpoints", 0), "spec.output.keepCheckpoints", "must be >= 1", False),
    (
        "checkpoint-zero",
        _set("spec.output.checkpointEverySteps", 0),
        "spec.output.checkpointEverySteps",
        "must be >= 1",
        False,
    ),
    ("nodes-zero", _spec(nodes=0), "spec.nodes", "must be >= 1", False),
    ("gpus-negative", _set("spec.resources", {"gpus": -1}), "spec.resources.gpus", "must be >= 0", False),
    ("backoff-negative", _spec(backoffLimit=-1), "spec.backoffLimit", "must be >= 0", False),
    (
        "virtual-tokens-zero",
        _both(_spec(technique="prompt-tuning", promptTuning={"virtualTokens": 0}), _delete("spec.lora")),
        "spec.promptTuning.virtualTokens",
        "must be >= 1",
        False,
    ),
    (
        "generations-one",
        _both(_spec(objective="rlhf", rlhf={"numGenerations": 1}), _set("spec.datasets", [PREF_DS, PROMPT_DS])),
        "spec.rlhf.numGenerations",
        "must be >= 2",
        False,
    ),
    (
        "string-too-long",
        _spec(image="registry.example/" + "x" * 4096),
        "spec.image",
        "allows at most 4096 characters",
        False,
    ),
    (
        "too-many-tolerations",
        _set("spec.resources", {"tolerations": [{"key": f"k{i}", "operator": "Exists"} for i in range(65)]}),
        "spec.resources.tolerations",
        "allows at most 64 items",
        False,
    ),
    (
        "node-selector-too-big",
        _set("spec.resources", {"nodeSelector": {f"k{i}": "v" for i in range(65)}}),
        "spec.resources.nodeSelector",
        "allows at most 64 entries (got 65)",
        False,
    ),
    (
        "too-many-datasets",
        _spec(datasets=[{"name": f"d{i}", "uri": f"s3://data/{i}.jsonl", "format": "messages"} for i in range(17)]),
        "spec.datasets",
        "at most 16 items",
        False,
    ),
    # Kubernetes' own rules for what the child Job, Service and pods carry
    (
        "toleration-empty",
        _set("spec.resources", {"tolerations": [{}]}),
        "spec.resources.tolerations[0].operator",
        "must be Exists when key is empty",
        True,
    ),
    (
        "toleration-exists-with-value",
        _set("spec.resources", {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "a100"}]}),
        "spec.resources.tolerations[0].value",
        "must be empty when operator is Exists",
        True,
    ),
    (
        "toleration-seconds-without-noexecute",
        _set(
            "spec.resources",
            {"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 60}]},
        ),
        "spec.resources.tolerations[0].tolerationSeconds",
        "needs effect NoExecute",
        True,
    ),
    (
        "toleration-key-with-space",
        _set("spec.resources", {"tolerations": [{"key": "gpu type", "operator": "Exists"}]}),
        "spec.resources.tolerations[0].key",
        "must be a label key",
        False,
    ),
    (
        "toleration-value-with-space",
        _set("spec.resources", {"tolerations": [{"key": "gpu", "value": "a 100"}]}),
        "spec.resources.tolerations[0].value",
        "must be a label value",
        False,
    ),
    (
        "node-selector-key-with-space",
        _set("spec.resources", {"nodeSelector": {"gpu type": "a100"}}),
        "spec.resources.nodeSelector",
        "'gpu type' must be a label key",
        True,
    ),
    (
        "node-selector-key-two-slashes",
        _set("spec.resources", {"nodeSelector": {"a.io/b/c": "x"}}),
        "spec.resources.nodeSelector",
        "must be a label key",
        True,
    ),
    (
        "node-selector-value-with-space",
        _set("spec.resources", {"nodeSelector": {"zone": "eu west"}}),
        "spec.resources.nodeSelector.zone",
        "must be a label value",
        False,
    ),
    (
        "node-selector-value-too-long",
        _set("spec.resources", {"nodeSelector": {"zone": "z" * 64}}),
        "spec.resources.nodeSelector.zone",
        "at most 63 characters",
        False,
    ),
    (
        "quantity-fractional-exponent",
        _set("spec.resources", {"memory": "1e3.5"}),
        "spec.resources.memory",
        "Kubernetes quantity",
        False,
    ),
    ("quantity-capital-k", _set("spec.resources", {"cpu": "1K"}), "spec.resources.cpu", "Kubernetes quantity", False),
    (
        "gpu-resource-unprefixed",
        _set("spec.resources", {"gpuResourceName": "gpu"}),
        "spec.resources.gpuResourceName",
        "native resource",
        False,
    ),
    (
        "gpu-resource-kubernetes-io",
        _set("spec.resources", {"gpuResourceName": "kubernetes.io/gpu"}),
        "spec.resources.gpuResourceName",
        "native resource",
        True,
    ),
    (
        "gpu-resource-quota-prefix",
        _set("spec.resources", {"gpuResourceName": "requests.nvidia.com/gpu"}),
        "spec.resources.gpuResourceName",
        "must not start with 'requests.'",
        True,
    ),
    (
        "gpu-resource-name-too-long",
        _set("spec.resources", {"gpuResourceName": "nvidia.com/" + "g" * 64}),
        "spec.resources.gpuResourceName",
        "no more than 63 characters",
        True,
    ),
    ("queue-name-too-long", _spec(queueName="q" * 64), "spec.queueName", "at most 63 characters", False),
    ("queue-name-not-dns", _spec(queueName="Team_A"), "spec.queueName", "a Kueue LocalQueue name", False),
    (
        "multi-node-name-starts-with-digit",
        _both(_spec(nodes=2), _set("metadata.name", "7b-lora")),
        "metadata.name",
        "must start with a letter when spec.nodes > 1",
        True,
    ),
    # URIs
    (
        "uri-no-scheme",
        _set("spec.model.uri", "Qwen/Qwen2.5-0.5B"),
        "spec.model.uri",
        "must be a URI with a scheme",
        False,
    ),
    (
        "uri-bad-scheme",
        _set("spec.model.uri", "gs://bucket/model/"),
        "spec.model.uri",
        "unsupported URI scheme 'gs://'",
        False,
    ),
    ("uri-bad-bucket", _set("spec.output.uri", "s3://Bad_Bucket/x/"), "spec.output.uri", "not a valid S3 URI", False),
    ("uri-relative-file", _set("spec.model.uri", "file://models/x"), "spec.model.uri", "file:///absolute/path", False),
    ("uri-output-hf", _set("spec.output.uri", "hf://org/out"), "spec.output.uri", "output must be s3://", False),
    (
        "uri-dataset-txt",
        _set("spec.datasets[0].uri", "s3://data/chat/train.txt"),
        "spec.datasets[0].uri",
        "unsupported data file type '.txt'",
        False,
    ),
    (
        "uri-dataset-hf-model",
        _set("spec.datasets[0].uri", "hf://org/name"),
        "spec.datasets[0].uri",
        "hf://datasets/org/name",
        False,
    ),
    ("uri-model-hf-dataset", _set("spec.model.uri", "hf://datasets/org/name"), "spec.model.uri", "not a model", False),
    (
        "endpoint-not-url",
        _set("spec.output.endpoint", "minio:9000"),
        "spec.output.endpoint",
        "http:// or https:// URL",
        False,
    ),
    # quantities and names
    ("cpu-bad", _set("spec.resources", {"cpu": "eight"}), "spec.resources.cpu", "Kubernetes quantity", False),
    (
        "memory-bad-unit",
        _set("spec.resources", {"memory": "64GB"}),
        "spec.resources.memory",
        "Kubernetes quantity",
        False,
    ),
    ("memory-zero", _set("spec.resources", {"memory": "0Gi"}), "spec.resources.memory", "positive quantity", False),
    ("cpu-negative", _set("spec.resources", {"cpu": "-2"}), "spec.resources.cpu", "positive quantity", False),
    (
        "secret-name-bad",
        _set("spec.output.credentialsSecret", "S3_Creds"),
        "spec.output.credentialsSecret",
        "a Secret name",
        False,
    ),
    (
        "gpu-resource-bad",
        _set("spec.resources", {"gpuResourceName": "nvidia.com/gpu!"}),
        "spec.resources.gpuResourceName",
        "extended resource name",
        False,
    ),
    ("name-uppercase", _set("metadata.name", "Job-A"), "metadata.name", "DNS label", False),
    ("name-too-long", _set("metadata.name", "a" * 51), "metadata.name", "at most 50 characters", False),
    ("task-name-bad", _set("spec.datasets[0].name", "Chat Data"), "spec.datasets[0].name", "lowercase letters", False),
    (
        "target-modules-bad",
        _set("spec.lora", {"targetModules": "q_proj, v_proj"}),
        "spec.lora.targetModules",
        "comma-separated",
        False,
    ),
    (
        "early-stop-metric",
        _both(
            _set("spec.datasets[0].evalFraction", 0.1), _set("spec.evaluation", {"earlyStopping": {"metric": "loss"}})
        ),
        "spec.evaluation.earlyStopping.metric",
        "eval_loss",
        False,
    ),
    # cross-field rules (the CRD carries each as CEL)
    (
        "lora-section-with-full",
        _spec(technique="full"),
        "spec.lora",
        "only allowed when spec.technique is lora or qlora",
        True,
    ),
    (
        "quantization-with-lora",
        _spec(quantization={"bits": 4}),
        "spec.quantization",
        "only allowed when spec.technique is qlora",
        True,
    ),
    (
        "adapter-section-with-lora",
        _spec(adapter={"bottleneckSize": 8}),
        "spec.adapter",
        "only allowed when spec.technique is adapter",
        True,
    ),
    (
        "prefix-section-with-lora",
        _spec(prefixTuning={}),
        "spec.prefixTuning",
        "only allowed when spec.technique is prefix-tuning",
        True,
    ),
    (
        "prompt-section-with-lora",
        _spec(promptTuning={"virtualTokens": 4}),
        "spec.promptTuning",
        "only allowed when spec.technique is prompt-tuning",
        True,
    ),
    (
        "classification-section-wrong-objective",
        _spec(classification={"labels": ["a", "b"]}),
        "spec.classification",
        "only allowed when spec.objective is classification",
        True,
    ),
    (
        "text-data-for-rlhf",
        _both(
            _spec(objective="rlhf", rlhf={"rewardModel": {"uri": "hf://org/rm"}}),
            _set("spec.datasets", [PROMPT_DS, TEXT_DS]),
        ),
        "spec.datasets[1].format",
        "objective rlhf needs format preference or prompt",
        True,
    ),
    (
        "messages-for-preference",
        _spec(objective="preference"),
        "spec.datasets[0].format",
        "objective preference needs format preference",
        True,
    ),
    (
        "fe-section-with-lora",
        _spec(featureExtraction={}),
        "spec.featureExtraction",
        "only allowed when spec.technique is feature-extraction",
        True,
    ),
    (
        "preference-section-wrong-objective",
        _spec(preference={"beta": 0.2}),
        "spec.preference",
        "only allowed when spec.objective is preference",
        True,
    ),
    ("rlhf-section-wrong-objective", _spec(rlhf={}), "spec.rlhf", "only allowed when spec.objective is rlhf", True),
    (
        "preference-data-for-causal-lm",
        _both(_spec(objective="causal-lm"), _set("spec.datasets", [PREF_DS])),
        "spec.datasets[0].format",
        "objective causal-lm needs format text",
        True,
    ),
    (
        "text-data-for-instruction",
        _set("spec.datasets", [TEXT_DS]),
        "spec.datasets[0].format",
        "objective instruction needs format messages or prompt-completion",
        True,
    ),
    (
        "messages-for-classification",
        _both(_spec(objective="classification")),
        "spec.datasets[0].format",
        "needs format classification",
        True,
    ),
    (
        "rlhf-without-reward",
        _both(_spec(objective="rlhf"), _set("spec.datasets", [PROMPT_DS])),
        "spec.rlhf.rewardModel.uri",
        "needs a reward model",
        True,
    ),
    (
        "rlhf-without-prompts",
        _both(_spec(objective="rlhf"), _set("spec.datasets", [PREF_DS])),
        "spec.datasets",
        "at least one dataset of format prompt",
        True,
    ),
    (
        "rlhf-batch-not-multiple",
        _both(_spec(objective="rlhf", rlhf={"numGenerations": 3}), _set("spec.datasets", [PREF_DS, PROMPT_DS])),
        "spec.rlhf.numGenerations",
        "= 8 must be a multiple of numGenerations (3)",
        True,
    ),
    (
        "rlhf-batch-with-gpus",
        _both(
            _spec(
                objective="rlhf", rlhf={"numGenerations": 8}, hyperparameters={"batchSize": 2}, resources={"gpus": 2}
            ),
            _set("spec.datasets", [PREF_DS, PROMPT_DS]),
        ),
        "spec.rlhf.numGenerations",
        "= 4 must be a multiple of numGenerations (8)",
        True,
    ),
    (
        "lm-head-lora-with-dpo",
        _both(
            _spec(objective="preference", lora={"targetModules": "q_proj,lm_head"}), _set("spec.datasets", [PREF_DS])
        ),
        "spec.lora.targetModules",
        "lm_head cannot carry LoRA",
        True,
    ),
    (
        "duplicate-dataset-names",
        _set(
            "spec.datasets",
            [{"uri": "s3://data/a.jsonl", "format": "messages"}, {"uri": "s3://data/b.jsonl", "format": "messages"}],
        ),
        "spec.datasets[1].name",
        "duplicate dataset name 'default'",
        True,
    ),
    (
        "columns-wrong-field",
        _set("spec.datasets[0].columns", {"text": "body"}),
        "spec.datasets[0].columns.text",
        "not a field of format messages",
        True,
    ),
    (
        "eval-uri-and-fraction",
        _both(_set("spec.datasets[0].evalUri", "s3://data/e.jsonl"), _set("spec.datasets[0].evalFraction", 0.1)),
        "spec.datasets[0].evalFraction",
        "either evalUri or evalFraction",
        True,
    ),
    (
        "early-stopping-no-eval",
        _set("spec.evaluation", {"earlyStopping": {}}),
        "spec.evaluation.earlyStopping",
        "needs evaluation data",
        True,
    ),
    (
        "merge-with-prompt-tuning",
        _both(_spec(technique="prompt-tuning"), _delete("spec.lora"), _set("spec.output.mergeAdapter", True)),
        "spec.output.mergeAdapter",
        "adapters can be merged",
        True,
    ),
    (
        "prefix-tuning-rlhf",
        _both(
            _spec(technique="prefix-tuning", objective="rlhf"),
            _delete("spec.lora"),
            _set("spec.datasets", [PREF_DS, PROMPT_DS]),
        ),
        "spec.technique",
        "cannot be used with objective rlhf",
        True,
    ),
    (
        "labels-vs-num-labels",
        _both(
            _spec(
                technique="feature-extraction",
                objective="classification",
                featureExtraction={"numLabels": 3},
                classification={"labels": ["a", "b"]},
            ),
            _delete("spec.lora"),
            _set("spec.datasets", [{"uri": "s3://data/x.csv", "format": "classification"}]),
        ),
        "spec.classification.labels",
        "names 2 classes but spec.featureExtraction.numLabels is 3",
        True,
    ),
    (
        "labels-duplicate",
        _both(
            _spec(objective="classification", classification={"labels": ["a", "a"]}),
            _set("spec.datasets", [{"uri": "s3://data/x.csv", "format": "classification"}]),
        ),
        "spec.classification.labels",
        "unique",
        False,
    ),
]


# -- round 2: distribution, pod options, tracking, resume, model cache and ambient credentials

CLS_DS = {"name": "tickets", "uri": "s3://data/tickets.csv", "format": "classification", "evalFraction": 0.1}


def _pod(**fields: Any) -> Callable[[dict], None]:
    return _spec(pod=fields)


def _volume(**fields: Any) -> Callable[[dict], None]:
    return _pod(
        volumes=[{"name": "corpus", "mountPath": "/data", "persistentVolumeClaim": {"claimName": "corpus"}} | fields]
    )


def _node_requirement(**requirement: Any) -> Callable[[dict], None]:
    term = {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a100"]} | requirement]}
    return _pod(
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}
    )


def _pod_term(**term: Any) -> Callable[[dict], None]:
    return _pod(affinity={"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname"} | term]}})  # fmt: skip


def _early_stopping(metric: str) -> Callable[[dict], None]:
    return _set("spec.evaluation", {"earlyStopping": {"metric": metric}})


_AFFINITY = "spec.pod.affinity"
_NODE_REQ = (
    f"{_AFFINITY}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0]"
)
_POD_TERM = f"{_AFFINITY}.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]"
_TWO_CHATS = _set("spec.datasets", [
    {"name": "chat", "uri": "s3://data/chat.jsonl", "format": "messages", "evalFraction": 0.1},
    {"name": "code", "uri": "s3://data/code.jsonl", "format": "messages"},
])  # fmt: skip

BAD += [
    # distributed
    (
        "distributed-bad-strategy",
        _spec(distributed={"strategy": "zero3"}),
        "spec.distributed.strategy",
        "must be one of",
        False,
    ),
    (
        "cpu-offload-with-ddp",
        _spec(distributed={"strategy": "ddp", "cpuOffload": True}),
        "spec.distributed.cpuOffload",
        "needs strategy fsdp or auto",
        True,
    ),
    (
        "fsdp-with-prompt-tuning",
        _both(_spec(technique="prompt-tuning", distributed={"strategy": "fsdp"}), _delete("spec.lora")),
        "spec.distributed.strategy",
        "prompt-tuning cannot use strategy fsdp",
        True,
    ),
    (
        "fsdp-with-8-bit-qlora",
        _spec(technique="qlora", quantization={"bits": 8}, distributed={"strategy": "fsdp"}),
        "spec.distributed.strategy",
        "held as int8, which FSDP cannot shard",
        True,
    ),
    (
        "cpu-offload-with-8-bit-qlora",
        _spec(technique="qlora", quantization={"bits": 8}, distributed={"cpuOffload": True}),
        "spec.distributed.cpuOffload",
        "held as int8, which FSDP cannot shard",
        True,
    ),
    (
        "cpu-offload-with-prefix-tuning",
        _both(_spec(technique="prefix-tuning", distributed={"cpuOffload": True}), _delete("spec.lora")),
        "spec.distributed.cpuOffload",
        "needs FSDP",
        True,
    ),
    # model cache and ambient credentials
    ("model-cache-string", _set("spec.model.cache", "yes"), "spec.model.cache", "must be true or false", False),
    (
        "ambient-with-hf-model",
        _set("spec.model.ambientCredentials", True),
        "spec.model.ambientCredentials",
        "s3:// URIs only",
        True,
    ),
    (
        "ambient-and-secret-on-output",
        _set("spec.output", {"uri": "s3://kubetune/x/", "credentialsSecret": "s3", "ambientCredentials": True}),
        "spec.output.ambientCredentials",
        "not both",
        True,
    ),
    (
        "ambient-with-file-dataset",
        _set("spec.datasets[0]", {"uri": "file:///data/chat.jsonl", "format": "messages", "ambientCredentials": True}),
        "spec.datasets[0].ambientCredentials",
        "s3:// URIs only",
        True,
    ),
    (
        "gpu-memory-bad-unit",
        _set("spec.resources", {"gpuMemory": "80GB"}),
        "spec.resources.gpuMemory",
        "Kubernetes quantity",
        False,
    ),
    # pod options
    (
        "pull-secret-bad-name",
        _pod(imagePullSecrets=["Reg_Cred"]),
        "spec.pod.imagePullSecrets[0]",
        "a Secret name",
        False,
    ),
    (
        "pull-secret-twice",
        _pod(imagePullSecrets=["regcred", "regcred"]),
        "spec.pod.imagePullSecrets",
        "must be unique",
        False,
    ),
    (
        "pod-label-kubetune",
        _pod(labels={"kubetune.dev/finetunejob": "other"}),
        "spec.pod.labels",
        "belongs to the operator",
        True,
    ),
    (
        "pod-label-kueue-subdomain",
        _pod(labels={"x.kueue.x-k8s.io/queue": "q"}),
        "spec.pod.labels",
        "belongs to the operator",
        True,
    ),
    ("pod-label-job-name", _pod(labels={"job-name": "other"}), "spec.pod.labels", "belongs to the operator", True),
    (
        "pod-label-managed-by",
        _pod(labels={"app.kubernetes.io/managed-by": "me"}),
        "spec.pod.labels",
        "belongs to the operator",
        True,
    ),
    ("pod-label-bad-key", _pod(labels={"cost center": "ml"}), "spec.pod.labels", "must be a label key", True),
    ("pod-label-bad-value", _pod(labels={"team": "ml team"}), "spec.pod.labels.team", "must be a label value", False),
    (
        "pod-annotation-kubetune-any-case",
        _pod(annotations={"KubeTune.dev/x": "1"}),
        "spec.pod.annotations",
        "belongs to the operator",
        True,
    ),
    (
        "pod-annotation-bad-key",
        _pod(annotations={"a b": "1"}),
        "spec.pod.annotations",
        "must be a qualified name",
        True,
    ),
    (
        "pod-annotations-too-large",
        _pod(annotations={f"note-{i}": "€" * 4096 for i in range(32)}),
        "spec.pod.annotations",
        "is larger than limit 262144",
        False,
    ),
    (
        "pod-annotations-too-many",
        _pod(annotations={f"a{i}": "x" for i in range(33)}),
        "spec.pod.annotations",
        "at most 32 entries",
        False,
    ),
    (
        "env-name-digit",
        _pod(env=[{"name": "1BAD", "value": "x"}]),
        "spec.pod.env[0].name",
        "environment variable name",
        False,
    ),
    (
        "env-name-dotdot",
        _pod(env=[{"name": "..x", "value": "x"}]),
        "spec.pod.env[0].name",
        "must not start with '..'",
        False,
    ),
    (
        "env-kubetune-prefix",
        _pod(env=[{"name": "KUBETUNE_OUTPUT_URI", "value": "s3://x/"}]),
        "spec.pod.env[0].name",
        "set by the operator",
        False,
    ),
    ("env-home", _pod(env=[{"name": "HOME", "value": "/tmp"}]), "spec.pod.env[0].name", "set by the operator", False),
    (
        "env-credential",
        _pod(env=[{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]),
        "spec.pod.env[0].name",
        "is a credential",
        False,
    ),
    (
        "env-value-from",
        _pod(env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
        "spec.pod.env[0].valueFrom",
        "unknown field",
        False,
    ),
    (
        "env-twice",
        _pod(env=[{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
        "spec.pod.env",
        "env names must be unique",
        False,
    ),
    ("volume-two-sources", _volume(configMap={"name": "ca"}), "spec.pod.volumes[0]", "set exactly one of", True),
    (
        "volume-no-source",
        _pod(volumes=[{"name": "corpus", "mountPath": "/data"}]),
        "spec.pod.volumes[0]",
        "set exactly one of",
        True,
    ),
    ("volume-relative-path", _volume(mountPath="data"), "spec.pod.volumes[0].mountPath", "absolute", False),
    (
        "volume-dotdot",
        _volume(mountPath="/data/../etc"),
        "spec.pod.volumes[0].mountPath",
        "must not contain '..'",
        False,
    ),
    ("volume-colon", _volume(mountPath="/data:rw"), "spec.pod.volumes[0].mountPath", "must not contain ':'", False),
    ("volume-trailing-slash", _volume(mountPath="/data/"), "spec.pod.volumes[0].mountPath", "trailing '/'", False),
    (
        "volume-under-scratch",
        _volume(mountPath="/scratch/huggingface"),
        "spec.pod.volumes[0].mountPath",
        "trainer's own /scratch",
        True,
    ),
    (
        "volume-over-etc",
        _volume(mountPath="/etc"),
        "spec.pod.volumes[0].mountPath",
        "trainer's own /etc/kubetune",
        True,
    ),
    (
        "volume-at-token",
        _volume(mountPath="/var/run/secrets/kubernetes.io/serviceaccount"),
        "spec.pod.volumes[0].mountPath",
        "hide or shadow",
        True,
    ),
    ("volume-at-root", _volume(mountPath="/"), "spec.pod.volumes[0].mountPath", "must not be '/'", False),
    (
        "volume-trainer-name",
        _volume(name="scratch"),
        "spec.pod.volumes[0].name",
        "a volume of the trainer itself",
        True,
    ),
    ("volume-name-uppercase", _volume(name="Corpus"), "spec.pod.volumes[0].name", "a DNS label", False),
    (
        "volume-same-mount-path",
        _pod(
            volumes=[
                {"name": "a", "mountPath": "/data", "configMap": {"name": "a"}},
                {"name": "b", "mountPath": "/data", "secret": {"secretName": "b"}},
            ]
        ),
        "spec.pod.volumes",
        "mount paths must be unique",
        True,
    ),
    (
        "volume-same-name",
        _pod(
            volumes=[
                {"name": "a", "mountPath": "/a", "configMap": {"name": "a"}},
                {"name": "a", "mountPath": "/b", "secret": {"secretName": "b"}},
            ]
        ),
        "spec.pod.volumes",
        "volume names must be unique",
        False,
    ),
    (
        "volume-claim-bad",
        _volume(persistentVolumeClaim={"claimName": "Corpus_1"}),
        "spec.pod.volumes[0].persistentVolumeClaim.claimName",
        "DNS subdomain",
        False,
    ),
    (
        "service-account-bad",
        _pod(serviceAccountName="ml_identity"),
        "spec.pod.serviceAccountName",
        "a ServiceAccount name",
        False,
    ),
    # affinity (core/v1), with Kubernetes' pod validation
    (
        "affinity-typo",
        _pod(affinity={"nodeAffinity": {"requiredDuringScheduling": {}}}),
        f"{_AFFINITY}.nodeAffinity.requiredDuringScheduling",
        "unknown field",
        False,
    ),
    (
        "affinity-in-without-values",
        _node_requirement(values=[]),
        f"{_NODE_REQ}.values",
        "must be specified when `operator` is 'In'",
        True,
    ),
    (
        "affinity-exists-with-values",
        _node_requirement(operator="Exists"),
        f"{_NODE_REQ}.values",
        "may not be specified when `operator` is 'Exists'",
        True,
    ),
    (
        "affinity-gt-two-values",
        _node_requirement(operator="Gt", values=["1", "2"]),
        f"{_NODE_REQ}.values",
        "single value",
        True,
    ),
    (
        "affinity-gt-not-integer",
        _node_requirement(operator="Lt", values=["many"]),
        f"{_NODE_REQ}.values",
        "must be an integer",
        True,
    ),
    ("affinity-bad-operator", _node_requirement(operator="Equals"), f"{_NODE_REQ}.operator", "must be one of", False),
    ("affinity-bad-key", _node_requirement(key="gpu type"), f"{_NODE_REQ}.key", "must be a label key", False),
    (
        "affinity-no-terms",
        _pod(affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}),
        f"{_AFFINITY}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
        "at least 1 item",
        False,
    ),
    (
        "affinity-weight-zero",
        _pod(
            affinity={
                "nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 0, "preference": {}}]}
            }
        ),
        f"{_AFFINITY}.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight",
        "must be >= 1",
        False,
    ),
    (
        "affinity-match-fields-key",
        _pod(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchFields": [{"key": "metadata.labels", "operator": "In", "values": ["n1"]}]}
                        ]
                    }
                }
            }
        ),
        f"{_AFFINITY}.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchFields[0].key",
        "must be one of",
        False,
    ),
    (
        "affinity-no-topology-key",
        _pod(affinity={"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}}),
        f"{_AFFINITY}.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey",
        "required",
        False,
    ),
    (
        "affinity-selector-in-without-values",
        _pod_term(labelSelector={"matchExpressions": [{"key": "app", "operator": "NotIn"}]}),
        f"{_POD_TERM}.labelSelector.matchExpressions[0].values",
        "must be specified when `operator` is 'In' or 'NotIn'",
        True,
    ),
    (
        "affinity-selector-gt",
        _pod_term(labelSelector={"matchExpressions": [{"key": "rank", "operator": "Gt", "values": ["1"]}]}),
        f"{_POD_TERM}.labelSelector.matchExpressions[0].operator",
        "must be one of",
        False,
    ),
    (
        "affinity-match-labels-bad-value",
        _pod_term(labelSelector={"matchLabels": {"app": "my app"}}),
        f"{_POD_TERM}.labelSelector.matchLabels.app",
        "must be a label value",
        False,
    ),
    (
        "affinity-match-label-keys-without-selector",
        _pod_term(matchLabelKeys=["team"]),
        f"{_POD_TERM}.matchLabelKeys",
        "when labelSelector is not set",
        True,
    ),
    (
        "affinity-key-match-and-mismatch",
        _pod_term(labelSelector={}, matchLabelKeys=["team"], mismatchLabelKeys=["team"]),
        f"{_POD_TERM}.mismatchLabelKeys",
        "exists in both",
        True,
    ),
    ("affinity-namespace-bad", _pod_term(namespaces=["Team_A"]), f"{_POD_TERM}.namespaces[0]", "a DNS label", False),
    # resumeFrom
    ("resume-from-hf", _spec(resumeFrom="hf://org/model"), "spec.resumeFrom", "s3:// or file:// checkpoint URI", False),
    ("resume-from-bad-name", _spec(resumeFrom="Other_Job"), "spec.resumeFrom", "a FineTuneJob's name", False),
    ("resume-from-long-name", _spec(resumeFrom="a" * 51), "spec.resumeFrom", "no more than 50 characters", False),
    ("resume-from-itself", _spec(resumeFrom="job-a"), "spec.resumeFrom", "names this FineTuneJob itself", True),
    # tracking
    (
        "mlflow-without-uri",
        _spec(tracking={"mlflow": {"experiment": "x"}}),
        "spec.tracking.mlflow.uri",
        "required",
        False,
    ),
    (
        "mlflow-uri-not-url",
        _spec(tracking={"mlflow": {"uri": "mlflow:5000"}}),
        "spec.tracking.mlflow.uri",
        "http:// or https:// URL",
        False,
    ),
    (
        "mlflow-secret-bad",
        _spec(tracking={"mlflow": {"uri": "http://mlflow:5000", "credentialsSecret": "MLflow"}}),
        "spec.tracking.mlflow.credentialsSecret",
        "a Secret name",
        False,
    ),
    (
        "wandb-without-secret",
        _spec(tracking={"wandb": {"project": "p"}}),
        "spec.tracking.wandb.credentialsSecret",
        "required",
        False,
    ),
    (
        "wandb-project-slash",
        _spec(tracking={"wandb": {"project": "team/p", "credentialsSecret": "wandb"}}),
        "spec.tracking.wandb.project",
        "W&B project name",
        False,
    ),
    # evaluation metrics the run reports, seed, precision
    (
        "early-stop-task-metric-single-dataset",
        _both(_set("spec.datasets[0].evalFraction", 0.1), _early_stopping("eval_chat_loss")),
        "spec.evaluation.earlyStopping.metric",
        "it reports eval_loss",
        True,
    ),
    (
        "early-stop-accuracy-not-classification",
        _both(_set("spec.datasets[0].evalFraction", 0.1), _early_stopping("eval_accuracy")),
        "spec.evaluation.earlyStopping.metric",
        "'eval_accuracy' is not reported",
        True,
    ),
    (
        "early-stop-eval-loss-multi-task",
        _both(_TWO_CHATS, _early_stopping("eval_loss")),
        "spec.evaluation.earlyStopping.metric",
        "it reports eval_chat_loss",
        True,
    ),
    (
        "early-stop-task-without-eval-data",
        _both(_TWO_CHATS, _early_stopping("eval_code_loss")),
        "spec.evaluation.earlyStopping.metric",
        "it reports eval_chat_loss",
        True,
    ),
    (
        "early-stop-classification-runtime",
        _both(_spec(objective="classification"), _set("spec.datasets", [CLS_DS]), _early_stopping("eval_runtime")),
        "spec.evaluation.earlyStopping.metric",
        "it reports eval_loss, eval_accuracy",
        True,
    ),
    (
        "early-stop-rlhf-unused-preference-eval",
        _both(
            _spec(objective="rlhf", rlhf={"rewardModel": {"uri": "hf://org/rm"}}),
            _set("spec.datasets", [PREF_DS | {"evalFraction": 0.1}, PROMPT_DS]),
            _set("spec.evaluation", {"earlyStopping": {}}),
        ),
        "spec.evaluation.earlyStopping",
        "needs evaluation data",
        True,
    ),
    (
        "early-stop-rlhf-stages-disagree",
        _both(
            _spec(objective="rlhf"),
            _set(
                "spec.datasets",
                [PREF_DS | {"evalFraction": 0.1}, PROMPT_DS | {"evalFraction": 0.1}, PROMPT_DS | {"name": "more"}],
            ),
            _set("spec.evaluation", {"earlyStopping": {}}),
        ),
        "spec.evaluation.earlyStopping.metric",
        "the reward-model stage reports eval_loss and the policy stage eval_prompts_loss",
        True,
    ),
    (
        "seed-too-big",
        _set("spec.hyperparameters", {"seed": 2**32}),
        "spec.hyperparameters.seed",
        "must be <= 4294967295",
        False,
    ),
    (
        "bf16-pure-with-sgd",
        _set("spec.hyperparameters", {"precision": "bf16-pure", "optimizer": "sgd"}),
        "spec.hyperparameters.optimizer",
        "bf16-pure needs optimizer adamw",
        True,
    ),
]


FULL_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]},
                {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["40000"]},
                {"key": "spot", "operator": "DoesNotExist"},
            ]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-7"]}]},
        ]},
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-west-1a"]},
            ]}},
        ],
    },
    "podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "dataset-cache"}},
                                           "namespaces": ["data"], "topologyKey": "kubernetes.io/hostname"}},
    ]},
    "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchExpressions": [{"key": "kubetune.dev/finetunejob", "operator": "Exists"}]},
         "namespaceSelector": {}, "topologyKey": "kubernetes.io/hostname",
         "matchLabelKeys": ["team"], "mismatchLabelKeys": ["tier"]},
    ]},
}  # fmt: skip

FULL_POD = {
    "imagePullSecrets": ["regcred", "mirror-cred"],
    "labels": {"cost-center": "ml-42", "example.com/team": "search", "kubetune.dev.example.com/x": "allowed"},
    "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false", "Example.com/Note": "any text: here"},
    "env": [{"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"}, {"name": "NCCL_DEBUG", "value": "WARN"},
            {"name": ".hidden", "value": ""}, {"name": "my.env-name"}],
    "volumes": [
        {"name": "corpus", "mountPath": "/data", "readOnly": True, "persistentVolumeClaim": {"claimName": "corpus"}},
        {"name": "certs", "mountPath": "/etc/ca", "configMap": {"name": "corp-ca"}},
        {"name": "keys", "mountPath": "/etc/keys", "secret": {"secretName": "signing-keys"}},
        {"name": "work", "mountPath": "/work/out", "readOnly": False, "persistentVolumeClaim": {"claimName": "work"}},
        {"name": "dots", "mountPath": "/srv/.cache/...", "configMap": {"name": "dots"}},
    ],
    "affinity": FULL_AFFINITY,
    "serviceAccountName": "ml-identity",
}  # fmt: skip

# (id, mutation): manifests both `kubetune validate` and the API server accept
GOOD: list[tuple[str, Callable[[dict], None]]] = [
    ("base", lambda doc: None),
    (
        "full-fsdp-cpu-offload",
        _both(_spec(technique="full", distributed={"strategy": "fsdp", "cpuOffload": True}), _delete("spec.lora")),
    ),
    ("qlora-fsdp", _spec(technique="qlora", distributed={"strategy": "fsdp"})),
    (
        "prompt-tuning-auto-and-ddp",
        _both(_spec(technique="prompt-tuning", distributed={"strategy": "ddp"}), _delete("spec.lora")),
    ),
    ("distributed-defaults", _spec(distributed={})),
    (
        "model-cache-and-ambient",
        _set("spec.model", {"uri": "s3://models/llama/", "cache": True, "ambientCredentials": True}),
    ),
    ("model-cache-off", _set("spec.model.cache", False)),
    (
        "dataset-and-output-ambient",
        _both(_set("spec.datasets[0].ambientCredentials", True), _set("spec.output", {"ambientCredentials": True})),
    ),
    ("gpu-memory", _set("spec.resources", {"gpus": 4, "gpuMemory": "80Gi"})),
    ("pod-everything", _spec(pod=FULL_POD)),
    ("pod-empty", _spec(pod={})),
    ("resume-from-s3", _spec(resumeFrom="s3://kubetune/team-a/job-0/uid/checkpoints/step-1200/")),
    ("resume-from-file", _spec(resumeFrom="file:///data/checkpoints/step-10/")),
    ("resume-from-job", _spec(resumeFrom="job-0")),
    (
        "tracking-both",
        _spec(
            tracking={
                "mlflow": {
                    "uri": "http://mlflow.mlops:5000",
                    "experiment": "support bot / v2",
                    "credentialsSecret": "mlflow-auth",
                },
                "wandb": {"project": "support-bot", "entity": "team-a", "credentialsSecret": "wandb-key"},
            }
        ),
    ),
    (
        "tracking-minimal",
        _spec(tracking={"mlflow": {"uri": "https://mlflow.example.com"}, "wandb": {"credentialsSecret": "wandb-key"}}),
    ),
    ("early-stop-eval-loss", _both(_set("spec.datasets[0].evalFraction", 0.1), _early_stopping("eval_loss"))),
    ("early-stop-per-task", _both(_TWO_CHATS, _early_stopping("eval_chat_loss"))),
    (
        "early-stop-accuracy",
        _both(_spec(objective="classification"), _set("spec.datasets", [CLS_DS]), _early_stopping("eval_accuracy")),
    ),
    (
        "early-stop-task-accuracy",
        _both(
            _spec(objective="classification"),
            _set("spec.datasets", [CLS_DS, CLS_DS | {"name": "mail"}]),
            _early_stopping("eval_mail_accuracy"),
        ),
    ),
    (
        "early-stop-rlhf-policy-only",
        _both(
            _spec(objective="rlhf", rlhf={"rewardModel": {"uri": "hf://org/rm"}}),
            _set("spec.datasets", [PREF_DS | {"evalFraction": 0.1}, PROMPT_DS | {"evalFraction": 0.1}]),
            _set("spec.evaluation", {"earlyStopping": {}}),
        ),
    ),
    (
        "early-stop-rlhf-both-stages",
        _both(
            _spec(objective="rlhf"),
            _set("spec.datasets", [PREF_DS | {"evalFraction": 0.1}, PROMPT_DS | {"evalFraction": 0.1}]),
            _set("spec.evaluation", {"earlyStopping": {}}),
        ),
    ),
    ("seed-largest", _set("spec.hyperparameters", {"seed": 2**32 - 1})),
    ("bf16-pure-adamw", _set("spec.hyperparameters", {"precision": "bf16-pure", "optimizer": "adamw"})),
]

# (id, mutation, path, message fragment): valid manifests with a setting that will not take effect
NOTICES: list[tuple[str, Callable[[dict], None], str, str]] = [
    (
        "dropout-with-preference",
        _both(_spec(objective="preference", lora={"dropout": 0.1}), _set("spec.datasets", [PREF_DS])),
        "spec.lora.dropout",
        "0.1 is not applied with objective preference",
    ),
    (
        "dropout-with-rlhf-reward-stage",
        _both(_spec(objective="rlhf", lora={"dropout": 0.1}), _set("spec.datasets", [PREF_DS, PROMPT_DS])),
        "spec.lora.dropout",
        "in the reward-model stage",
    ),
    (
        "packing-with-prompt-tuning",
        _both(_spec(technique="prompt-tuning", hyperparameters={"packing": True}), _delete("spec.lora")),
        "spec.hyperparameters.packing",
        "is off for technique prompt-tuning",
    ),
    (
        "packing-with-classification",
        _both(_spec(objective="classification", hyperparameters={"packing": True}), _set("spec.datasets", [CLS_DS])),
        "spec.hyperparameters.packing",
        "has no effect with objective classification",
    ),
    (
        "ddp-single-process",
        _spec(distributed={"strategy": "ddp"}),
        "spec.distributed.strategy",
        "nothing to spread with one process",
    ),
    (
        "liger-without-gpu",
        _both(_set("spec.resources", {"gpus": 0}), _set("spec.hyperparameters", {"ligerKernel": True})),
        "spec.hyperparameters.ligerKernel",
        "without a GPU",
    ),
    (
        "eval-steps-without-data",
        _set("spec.evaluation", {"everySteps": 50}),
        "spec.evaluation.everySteps",
        "no dataset has evaluation data",
    ),
]
# Valid manifests whose settings all take effect, or are defaults the user did not write.
QUIET = [
    (
        "dropout-default-with-preference",
        _both(_spec(objective="preference", lora={"rank": 8}), _set("spec.datasets", [PREF_DS])),
    ),
    (
        "dropout-zero-with-preference",
        _both(_spec(objective="preference", lora={"dropout": 0.0}), _set("spec.datasets", [PREF_DS])),
    ),
    (
        "dropout-with-given-reward-model",
        _both(
            _spec(objective="rlhf", lora={"dropout": 0.1}, rlhf={"rewardModel": {"uri": "hf://org/rm"}}),
            _set("spec.datasets", [PROMPT_DS]),
        ),
    ),
    ("packing-default-with-prompt-tuning", _both(_spec(technique="prompt-tuning"), _delete("spec.lora"))),
    ("packing-with-lora", _set("spec.hyperparameters", {"packing": True})),
    ("ddp-on-two-gpus", _both(_spec(distributed={"strategy": "ddp"}), _set("spec.resources", {"gpus": 2}))),
    (
        "eval-steps-with-data",
        _both(_set("spec.datasets[0].evalFraction", 0.1), _set("spec.evaluation", {"everySteps": 50})),
    ),
]
