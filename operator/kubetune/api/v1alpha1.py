"""The FineTuneJob API (kubetune.dev/v1alpha1), defined once.

These pydantic models are the single source of truth: `kubetune validate`, the operator and the
trainer parse manifests with them, and `kubetune crd` generates the CRD's openAPIV3Schema from them
(field descriptions, enums, bounds, defaults) plus the CEL rules in `rules.py`.

Field names are camelCase on the wire (the contract) and snake_case in Python.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from kubetune.api import k8s_validation as k8s
from kubetune.api import uris
from kubetune.api.constants import (
    API_VERSION,
    CREDENTIAL_KEYS,
    KIND,
    OBJECTIVES,
    OPERATOR_ENV,
    OPERATOR_ENV_PREFIX,
    RESERVED_LABEL_DOMAINS,
    RESERVED_LABEL_KEYS,
    TECHNIQUES,
    TRAINER_PATHS,
    TRAINER_VOLUMES,
    AdapterActivation,
    AttentionImplementation,
    ConditionStatus,
    ConditionType,
    DatasetFormat,
    DistributedStrategy,
    LRScheduler,
    Objective,
    Optimizer,
    Phase,
    Precision,
    PreferenceAlgorithm,
    QuantizationType,
    RLAlgorithm,
    Technique,
)

# Strict scalars: YAML already gives typed values, and the API server rejects "16" for an
# integer, so the Python side must not quietly coerce either.
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]
Bool = StrictBool
# Every string, list and map of the API has a bound, here and (generated from here) in the CRD: the API
# server prices each CEL rule by the largest value the fields it reads could hold, and refuses the CRD when
# a rule could cost too much. Unbounded, a string is assumed to fill the 3 MiB request.
MAX_STRING_LENGTH = 4096
Str = Annotated[StrictStr, Field(max_length=MAX_STRING_LENGTH)]
# Keys and values per map (node selector, dataset columns, metrics); far more than any job needs.
MAX_MAP_ENTRIES = 64
# A classification head's classes (featureExtraction.numLabels and classification.labels).
MAX_CLASSES = 100000
# checkpoints kept in S3 (output.keepCheckpoints) and listed in status.checkpoints.
MAX_KEEP_CHECKPOINTS = 1000
# numpy.random.seed (which transformers' set_seed calls) takes seeds in [0, 2**32).
MAX_SEED = 2**32 - 1

# Kubernetes resource.Quantity, e.g. "8", "500m", "64Gi", "1.5e3".
QUANTITY_PATTERN = k8s.QUANTITY_PATTERN
DNS_LABEL_PATTERN = k8s.DNS1123_LABEL_PATTERN
DNS_SUBDOMAIN_PATTERN = k8s.DNS1123_SUBDOMAIN_PATTERN
# Child object names are "<name>-<suffix>" and pods add more: keep room under 63 characters.
MAX_NAME_LENGTH = 50
TASK_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$"


def _check_quantity(value: Any) -> str:
    k8s.parse_positive_quantity(value)
    return str(value)


def _k8s_check(what: str, *checks: Callable[[str], list[str]]):
    """An AfterValidator refusing what Kubernetes' own validation refuses (an empty value passes)."""

    def check(value: str | None) -> str | None:
        problems = [p for c in checks for p in c(value)] if value else []
        if problems:
            raise ValueError(f"must be {what} (got {value!r}): {'; '.join(dict.fromkeys(problems))}")
        return value

    return check


def _check_pattern(pattern: str, what: str):
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if value and not compiled.fullmatch(value):
            raise ValueError(f"must be {what} (got {value!r})")
        return value

    return check


def _cel_list(values) -> str:
    return "[" + ", ".join(k8s.cel_string(str(v)) for v in values) + "]"


Quantity = Annotated[
    Any,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
SecretName = Annotated[
    Str,
    Field(max_length=253, json_schema_extra={"pattern": DNS_SUBDOMAIN_PATTERN}),
    AfterValidator(_check_pattern(DNS_SUBDOMAIN_PATTERN, "a Secret name (lowercase letters, digits, '-' and '.')")),
]
ModelUri = Annotated[
    Str,
    Field(json_schema_extra={"pattern": uris.MODEL_URI_PATTERN}),
    AfterValidator(uris.check_model_uri),
]
DatasetUri = Annotated[
    Str,
    Field(json_schema_extra={"pattern": uris.DATASET_URI_PATTERN}),
    AfterValidator(uris.check_dataset_uri),
]
OutputUri = Annotated[
    Str,
    Field(json_schema_extra={"pattern": uris.OUTPUT_URI_PATTERN}),
    AfterValidator(uris.check_output_uri),
]
DnsLabel = Annotated[
    Str,
    Field(min_length=1, max_length=k8s.DNS1123_LABEL_MAX_LENGTH, json_schema_extra={"pattern": DNS_LABEL_PATTERN}),
    AfterValidator(_k8s_check("a DNS label", k8s.is_dns1123_label)),
]
HttpUrl = Annotated[
    Str,
    Field(json_schema_extra={"pattern": r"^https?://[^\s/]+(/\S*)?$"}),
    AfterValidator(_check_pattern(r"^https?://[^\s/]+(/\S*)?$", "an http:// or https:// URL")),
]


class ApiModel(BaseModel):
    """Base: camelCase on the wire, unknown fields are errors, defaults validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The manifest form: camelCase keys, enum values as strings, unset optionals left out."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


# --------------------------------------------------------------------------- model & data

_AMBIENT_CEL = {
    "x-kubernetes-validations": [{
        "rule": "!self.ambientCredentials || ((!has(self.uri) || self.uri.startsWith('s3://')) && "
        "!has(self.credentialsSecret))",
        "message": "ambientCredentials reads an s3:// URI with the pod's cloud identity instead of a Secret: only for "
        "s3:// URIs, and not together with credentialsSecret",
        "fieldPath": ".ambientCredentials",
    }]
}  # fmt: skip
_AMBIENT_DESCRIPTION = (
    "Read {what} with the pod's cloud identity (IRSA, GKE workload identity; see spec.pod.serviceAccountName) "
    "instead of a Secret, where the platform's policy allows it. s3:// only; not together with credentialsSecret."
)


def _check_ambient(value: bool, info: ValidationInfo) -> bool:
    """ambientCredentials: an s3:// URI (an unset output URI is the operator's default) and no credentialsSecret."""
    if value:
        uri = info.data.get("uri")
        if isinstance(uri, str) and not uri.startswith("s3://"):
            raise ValueError(f"applies to s3:// URIs only: the pod's cloud identity reads object stores (got {uri!r})")
        if info.data.get("credentials_secret"):
            raise ValueError("set either credentialsSecret or ambientCredentials, not both")
    return value


class ModelSource(ApiModel):
    model_config = ConfigDict(json_schema_extra=_AMBIENT_CEL)

    uri: ModelUri = Field(
        description="Base model: hf://org/name[@revision], s3://bucket/prefix/ (a Hugging Face model folder) "
        "or file:///absolute/path."
    )
    credentials_secret: SecretName | None = Field(
        default=None,
        description="Secret in the job's namespace with HF_TOKEN (for hf://) or AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY[, AWS_SESSION_TOKEN] (for s3://). Its values are passed to the trainer "
        "only; the operator never reads them.",
    )
    endpoint: HttpUrl | None = Field(
        default=None, description="S3-compatible endpoint for an s3:// model; defaults to spec.output.endpoint."
    )
    trust_remote_code: Bool = Field(
        default=False,
        description="Run Python code shipped with the model repository. Off by default: enable only for "
        "repositories you trust.",
    )
    allow_pickle: Bool = Field(
        default=False,
        description="Allow loading pickled (.bin/.pt) weights, which can execute code. By default only "
        "safetensors weights are loaded.",
    )
    cache: Bool | None = Field(
        default=None,
        description="Use the cluster's shared model cache, where the platform enabled one: true = read the model "
        "through the cache, false = always fetch it from uri; unset = the platform's default.",
    )
    ambient_credentials: Bool = Field(default=False, description=_AMBIENT_DESCRIPTION.format(what="an s3:// model"))

    _ambient = field_validator("ambient_credentials")(_check_ambient)


class Dataset(ApiModel):
    model_config = ConfigDict(json_schema_extra=_AMBIENT_CEL)

    name: Annotated[
        Str,
        Field(max_length=40, json_schema_extra={"pattern": TASK_NAME_PATTERN}),
        AfterValidator(_check_pattern(TASK_NAME_PATTERN, "lowercase letters, digits, '-' and '_'")),
    ] = Field(
        default="default",
        description="Task name, unique within the job. With two or more datasets that have evaluation data, their "
        "evaluation metrics are named after it (eval_<name>_loss); with one, they are eval_loss. Required to tell "
        "tasks apart when there are two or more datasets.",
    )
    uri: DatasetUri = Field(
        description="Training data: a .jsonl, .json, .csv or .parquet file, a prefix (ending in /) of such "
        "files, or hf://datasets/org/name[@revision]."
    )
    format: DatasetFormat = Field(
        description="Row shape: text | prompt-completion | messages | preference | classification | prompt. "
        "Must fit spec.objective."
    )
    columns: dict[Str, Str] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Map from a format field (e.g. messages, prompt, chosen, text, label) to the source "
        "column that holds it, when the names differ.",
    )
    weight: Float = Field(default=1.0, gt=0, description="Sampling weight of this dataset in a multi-task mixture.")
    eval_uri: DatasetUri | None = Field(default=None, description="Held-out evaluation data for this task.")
    eval_fraction: Float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description="Fraction of the training rows held out for evaluation (instead of evalUri).",
    )
    split: Str = Field(default="train", min_length=1, description="Split to read from an hf://datasets URI.")
    subset: Str | None = Field(default=None, description="Configuration (subset) of an hf://datasets repository.")
    credentials_secret: SecretName | None = Field(
        default=None,
        description="Secret with HF_TOKEN or AWS_* keys for this dataset; default: spec.output.credentialsSecret for "
        "s3:// data, spec.model.credentialsSecret for hf:// data.",
    )
    endpoint: HttpUrl | None = Field(
        default=None, description="S3-compatible endpoint for s3:// data; defaults to spec.output.endpoint."
    )
    ambient_credentials: Bool = Field(default=False, description=_AMBIENT_DESCRIPTION.format(what="s3:// data"))

    _ambient = field_validator("ambient_credentials")(_check_ambient)


# --------------------------------------------------------------------------- training


class Hyperparameters(ApiModel):
    epochs: Float = Field(default=3.0, gt=0, description="Passes over the training data (used when maxSteps is 0).")
    max_steps: Int = Field(default=0, ge=0, description="Optimizer steps to run; 0 = run by epochs.")
    learning_rate: Float = Field(default=2.0e-4, gt=0, le=1, description="Peak learning rate.")
    batch_size: Int = Field(default=8, ge=1, le=4096, description="Examples per device per micro-batch.")
    gradient_accumulation_steps: Int = Field(
        default=1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step."
    )
    max_seq_length: Int = Field(
        default=2048, ge=16, le=1048576, description="Tokens per example (longer ones are truncated)."
    )
    warmup_ratio: Float = Field(
        default=0.03, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate."
    )
    weight_decay: Float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    lr_scheduler: LRScheduler = Field(default=LRScheduler.COSINE, description="Learning-rate schedule after warm-up.")
    precision: Precision = Field(
        default=Precision.BF16,
        description="bf16 | bf16-pure | fp16 | fp32. bf16 and fp16 are mixed precision: trained weights and AdamW "
        "state stay in fp32 (16 bytes per trained parameter), matmuls run in half precision. bf16-pure keeps "
        "everything in bf16 (10 bytes per trained parameter) and uses AdamW with Kahan-compensated updates so "
        "small updates are not rounded away (optimizer adamw only). Without a GPU (or without bf16 support) the "
        "trainer runs in fp32.",
    )
    gradient_checkpointing: Bool = Field(
        default=False, description="Recompute activations in the backward pass to save memory (slower)."
    )
    packing: Bool = Field(
        default=True,
        description="Pack several short examples into one sequence without cross-example attention "
        "(causal-lm and instruction objectives).",
    )
    seed: Int = Field(
        default=42,
        ge=0,
        le=MAX_SEED,
        description="Random seed for initialisation, shuffling and sampling; below 2^32 (numpy seeds with 32 bits).",
    )
    optimizer: Optimizer = Field(
        default=Optimizer.ADAMW,
        description="adamw | adamw8bit | pagedAdamw8bit | sgd | adafactor. 8-bit and paged optimizers need a GPU.",
    )
    max_grad_norm: Float = Field(default=1.0, ge=0, description="Gradient clipping norm; 0 disables clipping.")
    liger_kernel: Bool = Field(
        default=True,
        description="Use Liger fused kernels (fused linear cross-entropy, RMSNorm, RoPE, SwiGLU) for supported "
        "architectures when training on a GPU with liger-kernel installed; ignored otherwise.",
    )
    torch_compile: Bool = Field(
        default=False, description="Compile the model with torch.compile (faster steps after a warm-up; GPU)."
    )
    attention: AttentionImplementation = Field(
        default=AttentionImplementation.AUTO,
        description="Attention kernel: auto (the fastest available that keeps packed examples apart) | sdpa | "
        "flex | eager.",
    )


class Lora(ApiModel):
    rank: Int = Field(default=16, ge=1, le=1024, description="Rank r of the low-rank update matrices.")
    alpha: Float = Field(default=32.0, gt=0, description="Scaling numerator: the update is scaled by alpha/rank.")
    dropout: Float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="Dropout on the LoRA input. Not applied with objective preference, nor in the reward-model stage "
        "of rlhf: their TRL trainers turn every dropout off so the policy's and the reference's log-probabilities "
        "(or the reward of chosen and rejected) are computed alike.",
    )
    target_modules: Annotated[
        Str,
        Field(min_length=1, json_schema_extra={"pattern": r"^(all-linear|[A-Za-z0-9_.]+(,[A-Za-z0-9_.]+)*)$"}),
        AfterValidator(
            _check_pattern(
                r"^(all-linear|[A-Za-z0-9_.]+(,[A-Za-z0-9_.]+)*)$",
                "all-linear or a comma-separated list of module names such as q_proj,v_proj",
            )
        ),
    ] = Field(
        default="all-linear",
        description="Modules that get LoRA: all-linear, or comma-separated module names (q_proj,k_proj,v_proj,o_proj).",
    )
    use_dora: Bool = Field(
        default=False, description="Weight-decomposed LoRA (DoRA): slower, often closer to full fine-tuning."
    )
    use_rslora: Bool = Field(
        default=False, description="Rank-stabilised scaling alpha/sqrt(rank) instead of alpha/rank."
    )


class Quantization(ApiModel):
    bits: Literal[4, 8] = Field(default=4, description="Bits of the frozen base weights: 4 or 8.")
    type: QuantizationType = Field(
        default=QuantizationType.NF4, description="4-bit data type: nf4 | fp4 (ignored for 8 bits)."
    )
    double_quant: Bool = Field(default=True, description="Also quantize the quantization constants (4-bit only).")


class FeatureExtraction(ApiModel):
    trainable_layers: Int = Field(
        default=0, ge=0, description="How many of the last transformer layers train besides the head; 0 = head only."
    )
    num_labels: Int | None = Field(
        default=None,
        ge=2,
        le=MAX_CLASSES,
        description="Classes of the classification head; default: inferred from the training labels.",
    )


class Adapter(ApiModel):
    bottleneck_size: Int = Field(default=64, ge=1, le=65536, description="Width of each bottleneck module.")
    activation: AdapterActivation = Field(
        default=AdapterActivation.GELU, description="Non-linearity inside the bottleneck."
    )


class PromptTuning(ApiModel):
    virtual_tokens: Int = Field(default=20, ge=1, le=4096, description="Number of trainable soft-prompt tokens.")
    init_text: Str = Field(
        default="", description="Text whose token embeddings initialise the soft prompt; empty = random initialisation."
    )


class PrefixTuning(ApiModel):
    virtual_tokens: Int = Field(
        default=20, ge=1, le=4096, description="Number of trainable key/value prefix positions per layer."
    )
    projection: Bool = Field(default=False, description="Reparameterise the prefix through an MLP (as in the paper).")


def _check_unique(values: list[str] | None) -> list[str] | None:
    duplicates = sorted(v for v, n in Counter(values or ()).items() if n > 1)
    if duplicates:
        raise ValueError(f"labels must be unique (repeated: {', '.join(map(repr, duplicates))})")
    return values


class Classification(ApiModel):
    labels: Annotated[list[Str] | None, AfterValidator(_check_unique)] = Field(
        default=None,
        min_length=2,
        max_length=MAX_CLASSES,
        description="Class names in index order, each once; default: the sorted distinct labels of the training data.",
        # the API server refuses duplicates itself (a CEL uniqueness rule would cost n^2)
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )


class Preference(ApiModel):
    algorithm: PreferenceAlgorithm = Field(
        default=PreferenceAlgorithm.DPO, description="dpo (sigmoid loss) | ipo | hinge | robust."
    )
    beta: Float = Field(default=0.1, gt=0, le=10, description="Strength of the pull towards the reference model.")
    label_smoothing: Float = Field(
        default=0.0, ge=0, lt=0.5, description="Assumed fraction of flipped preference labels (robust DPO)."
    )


class RewardModel(ApiModel):
    uri: ModelUri | None = Field(
        default=None,
        description="A trained reward model (sequence classification, 1 label). Empty: train one from the "
        "preference datasets first.",
    )
    credentials_secret: SecretName | None = Field(default=None, description="Secret to read the reward model with.")


class Rlhf(ApiModel):
    algorithm: RLAlgorithm = Field(default=RLAlgorithm.GRPO, description="Online RL algorithm: grpo | rloo.")
    reward_model: RewardModel = Field(default_factory=RewardModel, description="Where the reward comes from.")
    num_generations: Int = Field(default=4, ge=2, le=256, description="Completions sampled per prompt.")
    max_completion_length: Int = Field(default=256, ge=1, le=65536, description="Tokens per sampled completion.")
    beta: Float = Field(default=0.0, ge=0, description="KL penalty towards the starting policy; 0 disables it.")
    temperature: Float = Field(default=1.0, gt=0, le=10, description="Sampling temperature for completions.")


class EarlyStopping(ApiModel):
    metric: Annotated[
        Str,
        Field(json_schema_extra={"pattern": r"^eval_[A-Za-z0-9_]+$"}),
        AfterValidator(_check_pattern(r"^eval_[A-Za-z0-9_]+$", "an evaluation metric such as eval_loss")),
    ] = Field(
        default="eval_loss",
        description="Evaluation metric to watch: eval_loss (eval_accuracy for "
        "classification) when one dataset has evaluation data, eval_<name>_loss of one of them when several do.",
    )
    patience: Int = Field(default=3, ge=1, description="Evaluations without improvement before training stops.")
    min_delta: Float = Field(default=0.0, ge=0, description="Smallest change that counts as an improvement.")


class Evaluation(ApiModel):
    every_steps: Int = Field(
        default=0, ge=0, description="Evaluate every N optimizer steps; 0 = at the end of each epoch."
    )
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Stop when the metric stops improving (needs evaluation data)."
    )


class Output(ApiModel):
    model_config = ConfigDict(json_schema_extra=_AMBIENT_CEL)

    uri: OutputUri | None = Field(
        default=None,
        description="Where checkpoints, metrics and the final model go: s3://bucket/prefix/ or file:///path/. "
        "Default: the operator's configured output URI.",
    )
    credentials_secret: SecretName | None = Field(
        default=None, description="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY[, AWS_SESSION_TOKEN]."
    )
    endpoint: HttpUrl | None = Field(
        default=None, description="S3-compatible endpoint, e.g. http://minio.storage:9000."
    )
    region: Str | None = Field(default=None, description="S3 region (default from the environment, else us-east-1).")
    checkpoint_every_steps: Int = Field(default=200, ge=1, description="Save a checkpoint every N optimizer steps.")
    keep_checkpoints: Int = Field(
        default=3, ge=1, le=MAX_KEEP_CHECKPOINTS, description="How many of the newest complete checkpoints to keep."
    )
    merge_adapter: Bool = Field(
        default=False, description="lora/qlora: also write the adapter merged into full weights (final/merged/)."
    )
    ambient_credentials: Bool = Field(default=False, description=_AMBIENT_DESCRIPTION.format(what="an s3:// output"))

    _ambient = field_validator("ambient_credentials")(_check_ambient)


# --------------------------------------------------------------------------- scheduling


# An optional label key ([DNS subdomain/]name): node selector keys, taint keys.
LabelKey = Annotated[
    Str,
    Field(max_length=k8s.QUALIFIED_NAME_MAX_LENGTH, json_schema_extra={
        "pattern": f"^({k8s.QUALIFIED_NAME_PATTERN[1:-1]})?$",
        "x-kubernetes-validations": [{
            "rule": f"self == '' || self.matches('{k8s.QUALIFIED_NAME_LENGTHS}')",
            "message": "a label key's prefix has at most 253 characters and its name at most 63",
        }],
    }),
    AfterValidator(_k8s_check("a label key ([DNS subdomain/]name)", k8s.is_qualified_name)),
]  # fmt: skip
LabelValue = Annotated[
    Str,
    Field(max_length=k8s.LABEL_VALUE_MAX_LENGTH, json_schema_extra={"pattern": k8s.LABEL_VALUE_PATTERN}),
    AfterValidator(_k8s_check("a label value", k8s.is_label_value)),
]


def _check_label_keys(labels: dict[str, str] | None) -> dict[str, str] | None:
    for key in labels or {}:
        problems = k8s.is_qualified_name(key)
        if problems:
            raise ValueError(f"key {key!r} must be a label key ([DNS subdomain/]name): {'; '.join(problems)}")
    return labels


def _label_keys_cel(what: str) -> dict:
    return {
        "x-kubernetes-validations": [{
            "rule": f"self.all(k, k.matches({k8s.cel_string(k8s.QUALIFIED_NAME_PATTERN)}) && "
            f"k.matches({k8s.cel_string(k8s.QUALIFIED_NAME_LENGTHS)}))",
            "message": f"{what} keys must be label keys: an optional DNS subdomain prefix (at most 253 characters) "
            "and '/', then a name of at most 63 alphanumeric characters, '-', '_' or '.'",
        }]
    }  # fmt: skip


class Toleration(ApiModel):
    """Kubernetes' toleration rules (core validation ValidateTolerations), in the CRD as CEL too."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.operator == 'Exists' || (has(self.key) && self.key != '')",
                    "message": 'operator must be Exists when key is empty, which means "match all values and all keys"',
                    "fieldPath": ".operator",
                },
                {
                    "rule": "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                    "message": "value must be empty when operator is Exists",
                    "fieldPath": ".value",
                },
                {
                    "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    "message": "tolerationSeconds needs effect NoExecute (only NoExecute taints evict)",
                    "fieldPath": ".tolerationSeconds",
                },
            ]
        }
    )
    # Kubernetes core/v1 field names are already camelCase.
    key: LabelKey | None = Field(
        default=None, description="Taint key to tolerate; empty with operator Exists = all taints."
    )
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists | Equal.")
    value: LabelValue | None = Field(default=None, description="Taint value (operator Equal; empty with Exists).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="NoSchedule | PreferNoSchedule | NoExecute; empty = all effects."
    )
    toleration_seconds: Int | None = Field(
        default=None, description="How long a NoExecute taint is tolerated (effect NoExecute only)."
    )

    @field_validator("operator", "value", "toleration_seconds")
    @classmethod
    def _kubernetes_rules(cls, value: Any, info: ValidationInfo) -> Any:
        data = info.data
        if info.field_name == "operator" and "key" not in data:
            return value  # the key itself is wrong; that is the problem to report
        fields = {"operator": "operator", "value": "value", "toleration_seconds": "tolerationSeconds"}
        problems = k8s.toleration_errors(
            key=data.get("key") or "",
            operator=value if info.field_name == "operator" else data.get("operator", "Equal"),
            value=(value if info.field_name == "value" else data.get("value")) or "",
            effect=data.get("effect") or "",
            has_seconds=info.field_name == "toleration_seconds" and value is not None,
        ).get(fields[info.field_name])
        if problems:
            raise ValueError("; ".join(problems))
        return value


class Resources(ApiModel):
    gpus: Int = Field(default=1, ge=0, le=64, description="GPUs per node (one training process each); 0 = CPU only.")
    gpu_resource_name: Annotated[
        Str,
        Field(
            min_length=1,
            max_length=k8s.EXTENDED_RESOURCE_NAME_MAX_LENGTH,
            json_schema_extra={
                "pattern": k8s.EXTENDED_RESOURCE_NAME_PATTERN,
                "x-kubernetes-validations": [
                    {
                        "rule": k8s.EXTENDED_RESOURCE_NAME_CEL,
                        "message": "must be an extended resource name such as nvidia.com/gpu: a domain outside "
                        "kubernetes.io/ (at most 244 characters, not starting with requests.), "
                        "'/', a name of at most 63",
                    }
                ],
            },
        ),
        AfterValidator(_k8s_check("an extended resource name such as nvidia.com/gpu", k8s.is_extended_resource_name)),
    ] = Field(
        default="nvidia.com/gpu",
        description="Extended resource that schedules GPUs, e.g. nvidia.com/gpu or amd.com/gpu.",
    )
    cpu: Quantity | None = Field(default=None, description='CPU request and limit per node, e.g. "8" or "7500m".')
    memory: Quantity | None = Field(default=None, description="Memory request and limit per node, e.g. 64Gi.")
    shared_memory: Quantity | None = Field(
        default=None,
        description="Size of /dev/shm for data-loader workers, e.g. 8Gi; default: half of memory, else 1Gi.",
    )
    node_selector: Annotated[dict[Str, LabelValue], AfterValidator(_check_label_keys)] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Node labels the training pods must match.",
        json_schema_extra=_label_keys_cel("nodeSelector"),
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=64, description="Taints the training pods tolerate."
    )
    gpu_memory: Quantity | None = Field(
        default=None,
        description="Memory of one GPU, e.g. 80Gi, for the memory plan; default: the operator's table of GPU models.",
    )


# --------------------------------------------------------------------------- pod options

# core/v1 Affinity, typed: the API server then checks its structure, refuses unknown fields under
# `kubectl apply`'s strict validation and documents it in `kubectl explain`, and the CEL rules below check at
# the edge what Kubernetes' pod validation checks (operators and their values, weights, topology keys);
# `x-kubernetes-preserve-unknown-fields` would store anything and leave every mistake to the Job's creation.
# Lists are bounded far above what a training job needs, so the CEL cost estimate stays small.
MAX_AFFINITY_TERMS = 8
MAX_SELECTOR_VALUES = 32

RequiredLabelKey = Annotated[LabelKey, Field(min_length=1)]


def _requirement_cel(operators: tuple[str, ...], gt_lt: bool) -> dict:
    rules = [
        {
            "rule": "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
            "message": "values must be specified when operator is In or NotIn",
            "fieldPath": ".values",
        },
        {
            "rule": "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
            "message": "values may not be specified when operator is Exists or DoesNotExist",
            "fieldPath": ".values",
        },
    ]
    if gt_lt:
        rules.append(
            {
                "rule": "!(self.operator in ['Gt', 'Lt']) || (has(self.values) && size(self.values) == 1 && "
                "self.values[0].matches('^-?[0-9]+$'))",
                "message": "values must be a single integer when operator is Gt or Lt",
                "fieldPath": ".values",
            }
        )
    return {"x-kubernetes-validations": rules}


def _check_requirement_values(node: bool):
    def check(values: list[str] | None, info: ValidationInfo) -> list[str] | None:
        operator = info.data.get("operator")
        if operator is None:
            return values  # the operator itself is wrong; that is the problem to report
        problems = k8s.selector_requirement_errors(operator, values or [], node=node)
        if not problems and node and operator in ("Gt", "Lt") and not re.fullmatch(r"-?[0-9]+", values[0]):
            problems = [f"must be an integer when operator is {operator} (got {values[0]!r})"]
        if problems:
            raise ValueError("; ".join(problems))
        return values

    return check


class NodeSelectorRequirement(ApiModel):
    model_config = ConfigDict(
        json_schema_extra=_requirement_cel(("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"), True)
    )
    key: RequiredLabelKey = Field(description="The node label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In | NotIn | Exists | DoesNotExist | Gt | Lt."
    )
    # (pod validation does not check node selector values: any string, though only label values match a label)
    values: list[Annotated[Str, Field(max_length=k8s.LABEL_VALUE_MAX_LENGTH)]] | None = Field(
        default=None,
        max_length=MAX_SELECTOR_VALUES,
        description="Values: some for In and NotIn, none for Exists and DoesNotExist, one integer for Gt and Lt.",
    )

    _values = field_validator("values")(_check_requirement_values(node=True))


class NodeFieldSelectorRequirement(ApiModel):
    key: Literal["metadata.name"] = Field(
        description="The node field: metadata.name (the only one Kubernetes supports)."
    )
    operator: Literal["In", "NotIn"] = Field(description="In | NotIn.")
    values: Annotated[
        list[Annotated[Str, Field(max_length=k8s.DNS1123_SUBDOMAIN_MAX_LENGTH, json_schema_extra={
            "pattern": k8s.DNS1123_SUBDOMAIN_PATTERN})]],
        Field(min_length=1, max_length=1),
    ] = Field(description="Exactly one node name.")  # fmt: skip


class NodeSelectorTerm(ApiModel):
    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, max_length=MAX_AFFINITY_TERMS, description="Requirements on node labels (all must hold)."
    )
    match_fields: list[NodeFieldSelectorRequirement] | None = Field(
        default=None, max_length=MAX_AFFINITY_TERMS, description="Requirements on node fields (all must hold)."
    )


class NodeSelector(ApiModel):
    node_selector_terms: list[NodeSelectorTerm] = Field(
        min_length=1, max_length=MAX_AFFINITY_TERMS, description="Terms of which a node must match at least one."
    )


class PreferredSchedulingTerm(ApiModel):
    weight: Int = Field(ge=1, le=100, description="Weight of this preference, 1-100.")
    preference: NodeSelectorTerm = Field(description="The node selector term to prefer.")


class NodeAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the training pods must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = Field(
        default=None, max_length=MAX_AFFINITY_TERMS, description="Nodes the training pods prefer, by weight."
    )


class LabelSelectorRequirement(ApiModel):
    model_config = ConfigDict(json_schema_extra=_requirement_cel(("In", "NotIn", "Exists", "DoesNotExist"), False))
    key: RequiredLabelKey = Field(description="The label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In | NotIn | Exists | DoesNotExist."
    )
    values: list[LabelValue] | None = Field(
        default=None,
        max_length=MAX_SELECTOR_VALUES,
        description="Label values: some for In and NotIn, none for Exists and DoesNotExist.",
    )

    _values = field_validator("values")(_check_requirement_values(node=False))


class LabelSelector(ApiModel):
    match_labels: (
        Annotated[dict[Str, LabelValue], Field(max_length=MAX_MAP_ENTRIES), AfterValidator(_check_label_keys)] | None
    ) = Field(
        default=None,
        description="Labels the pods must carry.",
        json_schema_extra=_label_keys_cel("matchLabels"),
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, max_length=MAX_AFFINITY_TERMS, description="Requirements on pod labels (all must hold)."
    )


def _check_label_key_list(keys: list[str] | None, info: ValidationInfo) -> list[str] | None:
    """validateMatchLabelKeysAndMismatchLabelKeys: only beside a labelSelector, and no key in both lists."""
    if keys and info.data.get("label_selector") is None and "label_selector" in info.data:
        raise ValueError("must not be specified when labelSelector is not set")
    both = sorted(set(keys or ()) & set(info.data.get("match_label_keys") or ()))
    if info.field_name == "mismatch_label_keys" and both:
        raise ValueError(f"{', '.join(map(repr, both))} exists in both matchLabelKeys and mismatchLabelKeys")
    return keys


class PodAffinityTerm(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.labelSelector) || ((!has(self.matchLabelKeys) || size(self.matchLabelKeys) == 0) "
                    "&& (!has(self.mismatchLabelKeys) || size(self.mismatchLabelKeys) == 0))",
                    "message": "matchLabelKeys and mismatchLabelKeys need a labelSelector",
                },
                {
                    "rule": "!has(self.matchLabelKeys) || !has(self.mismatchLabelKeys) || "
                    "self.matchLabelKeys.all(k, !(k in self.mismatchLabelKeys))",
                    "message": "a key cannot be in both matchLabelKeys and mismatchLabelKeys",
                    "fieldPath": ".mismatchLabelKeys",
                },
            ]
        }
    )
    label_selector: LabelSelector | None = Field(default=None, description="The pods this term is about.")
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces (by label) whose pods count; with namespaces, their union."
    )
    namespaces: list[DnsLabel] | None = Field(
        default=None,
        max_length=MAX_MAP_ENTRIES,
        description="Namespaces whose pods count; neither this nor namespaceSelector = the job's namespace.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    topology_key: RequiredLabelKey = Field(
        description="Node label whose value defines co-location, e.g. kubernetes.io/hostname or "
        "topology.kubernetes.io/zone."
    )
    match_label_keys: list[RequiredLabelKey] | None = Field(
        default=None,
        max_length=MAX_AFFINITY_TERMS,
        description="Label keys whose values, taken from the training pod, are added to labelSelector as In.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    mismatch_label_keys: list[RequiredLabelKey] | None = Field(
        default=None,
        max_length=MAX_AFFINITY_TERMS,
        description="Label keys whose values, taken from the training pod, are added to labelSelector as NotIn.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    _label_keys = field_validator("match_label_keys", "mismatch_label_keys")(_check_label_key_list)


class WeightedPodAffinityTerm(ApiModel):
    weight: Int = Field(ge=1, le=100, description="Weight of this preference, 1-100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The pod affinity term to prefer.")


class PodAffinity(ApiModel):
    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, max_length=MAX_AFFINITY_TERMS, description="Terms every training pod must satisfy."
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = Field(
        default=None, max_length=MAX_AFFINITY_TERMS, description="Terms the scheduler prefers, by weight."
    )


class Affinity(ApiModel):
    """core/v1 Affinity (matchLabelKeys and mismatchLabelKeys need Kubernetes 1.31 or newer)."""

    node_affinity: NodeAffinity | None = Field(default=None, description="Which nodes the training pods may run on.")
    pod_affinity: PodAffinity | None = Field(
        default=None, description="Pods the training pods run near (same topologyKey value)."
    )
    pod_anti_affinity: PodAffinity | None = Field(
        default=None, description="Pods the training pods keep away from (different topologyKey value)."
    )


EnvVarName = Annotated[
    Str,
    Field(min_length=1, max_length=k8s.DNS1123_SUBDOMAIN_MAX_LENGTH, json_schema_extra={
        "pattern": k8s.ENV_VAR_NAME_PATTERN,
        "x-kubernetes-validations": [
            {
                "rule": f"!self.startsWith({k8s.cel_string(OPERATOR_ENV_PREFIX)}) && "
                f"!(self in {_cel_list(OPERATOR_ENV + CREDENTIAL_KEYS)})",
                "message": f"is set by the operator ({OPERATOR_ENV_PREFIX}*, {', '.join(OPERATOR_ENV)}) or is a "
                f"credential ({', '.join(CREDENTIAL_KEYS)}): credentials go in a Secret named by a credentialsSecret",
            }
        ],
    }),
    AfterValidator(_k8s_check("an environment variable name", k8s.is_env_var_name)),
]  # fmt: skip


class EnvVar(ApiModel):
    name: EnvVarName = Field(description="Variable name (letters, digits, '_', '-', '.'; not starting with a digit).")
    value: Str = Field(default="", description="Its value, as plain text (Secrets go through credentialsSecret).")

    @field_validator("name")
    @classmethod
    def _not_the_operators(cls, name: str) -> str:
        if name.startswith(OPERATOR_ENV_PREFIX) or name in OPERATOR_ENV:
            raise ValueError(f"{name!r} is set by the operator ({OPERATOR_ENV_PREFIX}* and {', '.join(OPERATOR_ENV)})")
        if name in CREDENTIAL_KEYS:
            raise ValueError(
                f"{name!r} is a credential: put it in a Secret and name that in the matching credentialsSecret "
                "(the spec is readable by everyone who can read the FineTuneJob)"
            )
        return name


ObjectName = Annotated[
    Str,
    Field(min_length=1, max_length=k8s.DNS1123_SUBDOMAIN_MAX_LENGTH, json_schema_extra={
        "pattern": k8s.DNS1123_SUBDOMAIN_PATTERN}),
    AfterValidator(_k8s_check("an object name (a DNS subdomain)", k8s.is_dns1123_subdomain)),
]  # fmt: skip


class PersistentVolumeClaimSource(ApiModel):
    claim_name: ObjectName = Field(description="PersistentVolumeClaim in the job's namespace.")


class ConfigMapSource(ApiModel):
    name: ObjectName = Field(description="ConfigMap in the job's namespace; each key becomes a file.")


class SecretSource(ApiModel):
    secret_name: ObjectName = Field(description="Secret in the job's namespace; each key becomes a file.")


_VOLUME_SOURCES = ("persistentVolumeClaim", "configMap", "secret")
_TRAINER_PATH_CEL = " && ".join(
    f"self != {k8s.cel_string(p)} && !self.startsWith({k8s.cel_string(p + '/')}) && "
    f"!{k8s.cel_string(p)}.startsWith(self + '/')"
    for p in TRAINER_PATHS
)


def _check_mount_path(path: str) -> str:
    problems = k8s.mount_path_errors(path)
    if problems:
        raise ValueError("; ".join(problems) + f" (got {path!r})")
    clash = next((p for p in TRAINER_PATHS if k8s.path_overlaps(path, p)), None)
    if clash:
        raise ValueError(f"{path!r} would hide or shadow the trainer's own {clash}; mount elsewhere, e.g. /data")
    return path


MountPath = Annotated[
    Str,
    Field(max_length=1024, json_schema_extra={
        "pattern": k8s.MOUNT_PATH_PATTERN,
        "x-kubernetes-validations": [{
            "rule": _TRAINER_PATH_CEL,
            "message": f"must not be, lie inside or contain the trainer's own paths ({', '.join(TRAINER_PATHS)})",
        }],
    }),
    AfterValidator(_check_mount_path),
]  # fmt: skip


class Volume(ApiModel):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": " + ".join(f"(has(self.{s}) ? 1 : 0)" for s in _VOLUME_SOURCES) + " == 1",
                    "message": f"set exactly one of {', '.join(_VOLUME_SOURCES)}",
                },
                {
                    "rule": f"!(self.name in {_cel_list(TRAINER_VOLUMES)})",
                    "message": f"{', '.join(TRAINER_VOLUMES)} are volumes of the trainer itself",
                    "fieldPath": ".name",
                },
            ]
        }
    )  # fmt: skip
    name: DnsLabel = Field(description="Volume name, unique in the pod (a DNS label).")
    mount_path: MountPath = Field(description="Absolute path in the trainer container, e.g. /data.")
    read_only: Bool = Field(default=True, description="Mount read-only (the default); false lets the trainer write.")
    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(default=None, description="A PVC to mount.")
    config_map: ConfigMapSource | None = Field(default=None, description="A ConfigMap to mount as files.")
    secret: SecretSource | None = Field(default=None, description="A Secret to mount as files.")

    @field_validator("name")
    @classmethod
    def _not_a_trainer_volume(cls, name: str) -> str:
        if name in TRAINER_VOLUMES:
            raise ValueError(f"{name!r} is a volume of the trainer itself ({', '.join(TRAINER_VOLUMES)}); pick another")
        return name

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        given = [s for s in _VOLUME_SOURCES if getattr(self, _attribute(type(self), s)) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of {', '.join(_VOLUME_SOURCES)} (got {', '.join(given) or 'none'})")
        return self


def _attribute(model: type[BaseModel], alias: str) -> str:
    return next(name for name, field in model.model_fields.items() if field.alias == alias)


def _check_reserved_keys(what: str):
    def check(mapping: dict[str, str] | None) -> dict[str, str] | None:
        for key in mapping or {}:
            if _reserved_key(key):
                raise ValueError(
                    f"{what} key {key!r} belongs to the operator, Kueue or the Job controller "
                    f"({', '.join(d + '/' for d in RESERVED_LABEL_DOMAINS)}, {', '.join(RESERVED_LABEL_KEYS)})"
                )
        return mapping

    return check


def _reserved_key(key: str) -> bool:
    prefix, slash, _ = key.lower().partition("/")
    return (
        key in RESERVED_LABEL_KEYS
        or bool(slash)
        and any(prefix == d or prefix.endswith("." + d) for d in RESERVED_LABEL_DOMAINS)
    )


_RESERVED_KEY_PATTERN = "(?i)^([^/]*\\.)?(" + "|".join(d.replace(".", "\\.") for d in RESERVED_LABEL_DOMAINS) + ")/"
_RESERVED_KEYS_CEL = {
    "rule": f"self.all(k, !k.matches({k8s.cel_string(_RESERVED_KEY_PATTERN)}) && "
    f"!(k in {_cel_list(RESERVED_LABEL_KEYS)}))",
    "message": "keys under " + ", ".join(d + "/" for d in RESERVED_LABEL_DOMAINS) + " and "
    + ", ".join(RESERVED_LABEL_KEYS) + " belong to the operator, Kueue or the Job controller",
}  # fmt: skip


def _check_annotations(annotations: dict[str, str] | None) -> dict[str, str] | None:
    problems = k8s.annotations_errors(annotations or {})
    if problems:
        raise ValueError("; ".join(problems))
    return annotations


def _check_unique(what: str, key: Callable[[Any], str]):
    def check(items: list | None) -> list | None:
        duplicates = sorted(v for v, n in Counter(key(item) for item in items or ()).items() if n > 1)
        if duplicates:
            raise ValueError(f"{what} must be unique (repeated: {', '.join(map(repr, duplicates))})")
        return items

    return check


# At most this many annotations: 32 x (317-character key + 4096-character value) stays far under the API server's
# 256 KiB for all of a pod's annotations, leaving room for those of Kueue and the operator.
MAX_POD_ANNOTATIONS = 32


class Pod(ApiModel):
    """Options of the training pods, within the platform's policy; pods stay within the restricted Pod Security
    Standard (no host paths, privileges or added capabilities can be asked for here)."""

    image_pull_secrets: Annotated[list[SecretName], AfterValidator(_check_unique("Secret names", str))] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets (in the job's namespace) to pull the trainer image with.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    labels: Annotated[
        dict[Str, LabelValue], AfterValidator(_check_label_keys), AfterValidator(_check_reserved_keys("label"))
    ] = Field(
        default_factory=dict,
        max_length=MAX_MAP_ENTRIES,
        description="Labels of the training pods (not under kubetune.dev/, kueue.x-k8s.io/ or batch.kubernetes.io/).",
        json_schema_extra={
            "x-kubernetes-validations": [*_label_keys_cel("labels")["x-kubernetes-validations"], _RESERVED_KEYS_CEL]
        },
    )
    annotations: Annotated[
        dict[Str, Str], AfterValidator(_check_annotations), AfterValidator(_check_reserved_keys("annotation"))
    ] = Field(
        default_factory=dict,
        max_length=MAX_POD_ANNOTATIONS,
        description="Annotations of the training pods (not under kubetune.dev/, kueue.x-k8s.io/ or "
        "batch.kubernetes.io/).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.all(k, k.matches({k8s.cel_string('(?i)' + k8s.QUALIFIED_NAME_PATTERN)}) && "
                    f"k.matches({k8s.cel_string(k8s.QUALIFIED_NAME_LENGTHS)}))",
                    "message": "annotation keys must be qualified names: an optional DNS subdomain prefix (at most 253 "
                    "characters) and '/', then a name of at most 63 alphanumeric characters, '-', '_' or '.'",
                },
                _RESERVED_KEYS_CEL,
            ]
        },
    )
    env: Annotated[list[EnvVar], AfterValidator(_check_unique("env names", lambda e: e.name))] = Field(
        default_factory=list,
        max_length=64,
        description="Plain environment variables of the trainer (no Secrets: those go through credentialsSecret).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    volumes: Annotated[
        list[Volume],
        AfterValidator(_check_unique("volume names", lambda v: v.name)),
        AfterValidator(_check_unique("mount paths", lambda v: v.mount_path)),
    ] = Field(
        default_factory=list,
        max_length=16,
        description="PersistentVolumeClaims, ConfigMaps and Secrets mounted into the trainer container.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            "x-kubernetes-validations": [{
                "rule": "self.all(v, self.exists_one(w, w.mountPath == v.mountPath))",
                "message": "mount paths must be unique",
            }],
        },
    )  # fmt: skip
    affinity: Affinity | None = Field(default=None, description="Node and pod affinity of the training pods (core/v1).")
    service_account_name: Annotated[
        Str,
        Field(
            max_length=k8s.DNS1123_SUBDOMAIN_MAX_LENGTH,
            json_schema_extra={"pattern": f"^({k8s.DNS1123_SUBDOMAIN_FMT})?$"},
        ),
        AfterValidator(_k8s_check("a ServiceAccount name", k8s.is_dns1123_subdomain)),
    ] = Field(
        default="",
        description="ServiceAccount of the training pods, for a cloud identity (IRSA, workload identity) where the "
        "platform's policy allows it; empty = the job's own account, which holds no cloud identity.",
    )


# --------------------------------------------------------------------------- distribution and tracking


class Distributed(ApiModel):
    strategy: DistributedStrategy = Field(
        default=DistributedStrategy.AUTO,
        description="How the model spreads over the job's GPUs (world size = nodes x gpus): auto (ddp when one "
        "replica fits a GPU, else fsdp) | ddp (a whole replica per GPU) | fsdp (weights, gradients and optimizer "
        "state sharded over the GPUs).",
    )
    cpu_offload: Bool = Field(
        default=False,
        description="fsdp: keep parameters and optimizer state in host memory (slower; fits larger models). "
        "Needs strategy fsdp or auto.",
    )


class Mlflow(ApiModel):
    uri: HttpUrl = Field(description="MLflow tracking server, e.g. http://mlflow.mlops:5000.")
    experiment: Annotated[Str, Field(max_length=256)] = Field(
        default="", description="Experiment to log the run in; empty = the FineTuneJob's name."
    )
    credentials_secret: SecretName | None = Field(
        default=None,
        description="Secret with MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD; "
        "none for a server without authentication.",
    )


WANDB_PROJECT_PATTERN = r"^[^/\\#?%:]*$"


class Wandb(ApiModel):
    project: Annotated[
        Str,
        Field(max_length=128, json_schema_extra={"pattern": WANDB_PROJECT_PATTERN}),
        AfterValidator(_check_pattern(WANDB_PROJECT_PATTERN, "a W&B project name (none of / \\ # ? % :)")),
    ] = Field(default="", description="Weights & Biases project; empty = the FineTuneJob's name.")
    entity: Annotated[
        Str,
        Field(max_length=64, json_schema_extra={"pattern": r"^[A-Za-z0-9._-]*$"}),
        AfterValidator(_check_pattern(r"^[A-Za-z0-9._-]*$", "a W&B team or user name")),
    ] = Field(default="", description="Team or user that owns the project; empty = the API key's default entity.")
    credentials_secret: SecretName = Field(
        description="Secret with WANDB_API_KEY (required: a pod cannot log in interactively)."
    )


class Tracking(ApiModel):
    mlflow: Mlflow | None = Field(default=None, description="Also log parameters, metrics and checkpoints to MLflow.")
    wandb: Wandb | None = Field(default=None, description="Also log parameters and metrics to Weights & Biases.")


def _check_resume_from(value: str) -> str:
    if not value:
        return value
    if "://" in value:
        parsed = uris.parse_uri(value)
        if not (parsed.is_object_store or parsed.scheme == "file"):
            raise ValueError(f"must be an s3:// or file:// checkpoint URI, or a FineTuneJob's name (got {value!r})")
        return value
    problems = k8s.is_dns1123_label(value) + ([f"must be no more than {MAX_NAME_LENGTH} characters"]
                                              if len(value) > MAX_NAME_LENGTH else [])  # fmt: skip
    if problems:
        raise ValueError(f"must be a checkpoint URI (s3://, file://) or a FineTuneJob's name (got {value!r}): "
                         f"{'; '.join(dict.fromkeys(problems))}")  # fmt: skip
    return value


# a FineTuneJob's name: a DNS label of at most MAX_NAME_LENGTH characters
_JOB_NAME_FMT = "[a-z0-9]([-a-z0-9]{0,%d}[a-z0-9])?" % (MAX_NAME_LENGTH - 2)
RESUME_FROM_PATTERN = f"^({uris.OUTPUT_URI_PATTERN[1:-1]}|{_JOB_NAME_FMT})?$"


class Spec(ApiModel):
    technique: Technique = Field(description=f"How the weights adapt: {' | '.join(Technique)}.")
    objective: Objective = Field(
        default=Objective.CAUSAL_LM,
        description="What the model learns from: causal-lm | instruction | classification | preference | rlhf.",
    )
    model: ModelSource = Field(description="The base model to fine-tune.")
    datasets: list[Dataset] = Field(
        min_length=1,
        max_length=16,
        description="Training data: one entry is a single task; two or more are mixed by weight (multi-task).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Optimisation settings.")
    lora: Lora | None = Field(default=None, description="LoRA settings (technique lora or qlora).")
    quantization: Quantization | None = Field(default=None, description="Base-model quantization (technique qlora).")
    feature_extraction: FeatureExtraction | None = Field(
        default=None, description="Head and last-layers settings (technique feature-extraction)."
    )
    adapter: Adapter | None = Field(default=None, description="Bottleneck adapter settings (technique adapter).")
    prompt_tuning: PromptTuning | None = Field(
        default=None, description="Soft-prompt settings (technique prompt-tuning)."
    )
    prefix_tuning: PrefixTuning | None = Field(default=None, description="Prefix settings (technique prefix-tuning).")
    classification: Classification | None = Field(
        default=None, description="Label settings (objective classification)."
    )
    preference: Preference | None = Field(
        default=None, description="Preference optimisation settings (objective preference)."
    )
    rlhf: Rlhf | None = Field(default=None, description="Reward model and online RL settings (objective rlhf).")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="When to evaluate and when to stop early.")
    output: Output = Field(default_factory=Output, description="Where results go, and checkpointing.")
    resume_from: Annotated[
        Str,
        Field(json_schema_extra={"pattern": RESUME_FROM_PATTERN}),
        AfterValidator(_check_resume_from),
    ] = Field(
        default="",
        description="Start from a checkpoint: its URI (s3:// or file://), or another FineTuneJob's name in this "
        "namespace (its newest complete checkpoint). Weights always; optimizer state when compatible.",
    )
    tracking: Tracking | None = Field(
        default=None, description="Experiment trackers, beside TensorBoard and metrics.jsonl (always written)."
    )
    resources: Resources = Field(default_factory=Resources, description="What each training node gets.")
    distributed: Distributed | None = Field(
        default=None,
        description="How the model spreads over the job's GPUs; unset = strategy auto without CPU offload.",
    )
    pod: Pod | None = Field(default=None, description="Options of the training pods (within the platform's policy).")
    nodes: Int = Field(
        default=1, ge=1, le=1024, description="Training nodes; more than 1 = multi-node data parallelism (torchrun)."
    )
    image: Str = Field(default="", description="Trainer image override; empty = the operator's default trainer image.")
    # the LocalQueue's name (a DNS subdomain), also the value of the Job's kueue.x-k8s.io/queue-name label
    queue_name: Annotated[
        Str,
        Field(
            max_length=k8s.LABEL_VALUE_MAX_LENGTH, json_schema_extra={"pattern": f"^({k8s.DNS1123_SUBDOMAIN_FMT})?$"}
        ),
        AfterValidator(_k8s_check("a Kueue LocalQueue name", k8s.is_dns1123_subdomain, k8s.is_label_value)),
    ] = Field(
        default="",
        description="Kueue LocalQueue: the child Job carries kueue.x-k8s.io/queue-name "
        "and starts suspended until admitted.",
    )
    priority_class_name: Annotated[
        Str,
        Field(
            max_length=k8s.DNS1123_SUBDOMAIN_MAX_LENGTH,
            json_schema_extra={"pattern": f"^({k8s.DNS1123_SUBDOMAIN_FMT})?$"},
        ),
        AfterValidator(_k8s_check("a PriorityClass name", k8s.is_dns1123_subdomain)),
    ] = Field(default="", description="PriorityClass of the training pods.")
    suspend: Bool = Field(default=False, description="Suspend (true) or resume (false) the job; editable at any time.")
    backoff_limit: Int = Field(
        default=3, ge=0, le=100, description="Retries after infrastructure failures; user errors fail at once."
    )
    active_deadline_seconds: Int = Field(
        default=0, ge=0, description="Fail the job after this many seconds running; 0 = none."
    )
    ttl_seconds_after_finished: Int = Field(
        default=0,
        ge=0,
        description="Delete the child objects this long after the job finishes (S3 output is kept); 0 = keep.",
    )

    @property
    def chosen_service_account(self) -> str:
        """spec.pod.serviceAccountName; "" when the spec names none (the pods run as the namespace's `default`)."""
        return self.pod.service_account_name if self.pod is not None else ""

    def resolved(self) -> Spec:
        """A copy with the technique's and objective's own sections filled with their defaults."""
        sections = [*TECHNIQUES[self.technique].sections, OBJECTIVES[self.objective].section]
        fill: dict[str, Any] = {}
        for section in filter(None, sections):
            attribute, model = SECTIONS[section]
            if getattr(self, attribute) is None:
                fill[attribute] = model()
        return self.model_copy(update=fill)


def _section_model(annotation: Any) -> type[ApiModel]:
    """The model class of an optional section field (`Lora | None` -> Lora)."""
    for option in getattr(annotation, "__args__", (annotation,)):
        if isinstance(option, type) and issubclass(option, ApiModel):
            return option
    raise TypeError(f"not a section model: {annotation!r}")


# Every technique's and objective's own spec section (camelCase) -> (its Spec attribute, its model). A table row
# that names a section Spec lacks fails here, at import.
SECTIONS: dict[str, tuple[str, type[ApiModel]]] = {
    section: next((name, _section_model(f.annotation)) for name, f in Spec.model_fields.items() if f.alias == section)
    for section in [*(s for info in TECHNIQUES.values() for s in info.sections),
                    *(info.section for info in OBJECTIVES.values() if info.section)]
}  # fmt: skip


# --------------------------------------------------------------------------- status


class Condition(ApiModel):
    model_config = ConfigDict(extra="ignore")
    type: Str = Field(description=" | ".join(ConditionType) + ".")
    status: ConditionStatus = Field(description="True | False | Unknown.")
    reason: Str = Field(default="", description="Machine-readable reason in CamelCase.")
    message: Str = Field(default="", description="Human-readable details.")
    last_transition_time: Str | None = Field(
        default=None, description="When the status last changed.", json_schema_extra={"format": "date-time"}
    )
    observed_generation: Int | None = Field(
        default=None, description="The .metadata.generation this condition was set from."
    )


class Progress(ApiModel):
    model_config = ConfigDict(extra="ignore")
    step: Int = Field(default=0, description="Optimizer steps done.")
    total_steps: Int = Field(default=0, description="Optimizer steps planned.")
    epoch: Float = Field(default=0.0, description="Epochs done (fractional).")
    percent: Int = Field(default=0, description="step / totalSteps in percent.")
    eta_seconds: Int | None = Field(default=None, description="Estimated seconds to completion.")
    stage: Str | None = Field(default=None, description="rlhf: reward-model or policy.")


class CheckpointRef(ApiModel):
    model_config = ConfigDict(extra="ignore")
    step: Int = Field(description="Optimizer step of the checkpoint.")
    uri: Str = Field(description="Where the checkpoint lies.")
    time: Str | None = Field(default=None, description="When it completed.", json_schema_extra={"format": "date-time"})
    eval_loss: Float | None = Field(default=None, description="Evaluation loss at this step, if evaluated.")


class OutputRefs(ApiModel):
    model_config = ConfigDict(extra="ignore")
    model_uri: Str | None = Field(default=None, description="The final model in Hugging Face format.")
    metrics_uri: Str | None = Field(default=None, description="metrics.jsonl, one JSON object per logged step.")
    tensorboard_uri: Str | None = Field(default=None, description="TensorBoard event files.")
    checkpoints_uri: Str | None = Field(default=None, description="Folder of the checkpoints.")


class Plan(ApiModel):
    model_config = ConfigDict(extra="ignore")
    strategy: DistributedStrategy | None = Field(default=None, description="The strategy chosen: ddp or fsdp.")
    world_size: Int | None = Field(default=None, ge=1, description="Training processes: nodes x GPUs per node.")
    cpu_offload: Bool | None = Field(default=None, description="fsdp: parameters and optimizer state in host memory.")
    # The contract spells GiB with a capital B (perGpuGiB), which the camelCase alias generator would not.
    per_gpu_gib: Float | None = Field(
        default=None,
        ge=0,
        alias="perGpuGiB",
        description="Estimated memory each GPU needs, in GiB (weights, gradients, optimizer state, activations).",
    )
    gpu_memory_gib: Float | None = Field(
        default=None,
        ge=0,
        alias="gpuMemoryGiB",
        description="Memory of one GPU, in GiB (spec.resources.gpuMemory or the GPU table).",
    )
    fits: Bool | None = Field(default=None, description="Whether perGpuGiB fits gpuMemoryGiB.")


class ModelCacheStatus(ApiModel):
    model_config = ConfigDict(extra="ignore")
    uri: Str | None = Field(default=None, description="Where the cluster's model cache holds this job's base model.")
    hit: Bool | None = Field(default=None, description="Whether the model was already in the cache.")


class Status(ApiModel):
    model_config = ConfigDict(extra="ignore")
    phase: Phase | None = Field(
        default=None, description="Pending | Queued | Running | Succeeded | Failed | Suspended."
    )
    observed_generation: Int | None = Field(default=None, description="The .metadata.generation the status reflects.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=32,
        description="Latest observations (metav1.Condition).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    start_time: Str | None = Field(
        default=None, description="When training first started.", json_schema_extra={"format": "date-time"}
    )
    completion_time: Str | None = Field(
        default=None, description="When the job finished.", json_schema_extra={"format": "date-time"}
    )
    attempts: Int | None = Field(default=None, description="Training attempts so far (retries + 1).")
    job_name: Str | None = Field(default=None, description="The child batch/v1 Job.")
    progress: Progress | None = Field(default=None, description="Live training progress reported by the trainer.")
    metrics: dict[Str, float] | None = Field(
        default=None,
        max_length=MAX_MAP_ENTRIES,
        description="Latest metrics: loss, evalLoss, learningRate, gradNorm, tokensPerSecond, "
        "reward, eval_<task>_loss.",
    )
    checkpoints: list[CheckpointRef] | None = Field(
        default=None, max_length=MAX_KEEP_CHECKPOINTS, description="The newest complete checkpoints."
    )
    output: OutputRefs | None = Field(default=None, description="Where the results are.")
    plan: Plan | None = Field(default=None, description="The memory plan: how the model spreads over the GPUs.")
    model_cache: ModelCacheStatus | None = Field(default=None, description="The model cache, when one was used.")
    message: Str | None = Field(default=None, description="The reason of the last failure, in words a user can act on.")


# --------------------------------------------------------------------------- the resource


class ObjectMeta(ApiModel):
    # The API server adds uid, resourceVersion, managedFields...: accept and ignore them.
    model_config = ConfigDict(extra="allow")
    name: Annotated[
        Str,
        Field(max_length=MAX_NAME_LENGTH),
        AfterValidator(
            _check_pattern(
                DNS_LABEL_PATTERN,
                "a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
            )
        ),
    ] = Field(description="Name of the job; its child objects are named after it.")
    namespace: Annotated[Str, AfterValidator(_check_pattern(DNS_LABEL_PATTERN, "a namespace name"))] | None = None
    # Not part of the CRD schema (the API server checks metadata itself); annotations such as
    # kubectl's last-applied-configuration are far longer than MAX_STRING_LENGTH.
    labels: dict[StrictStr, StrictStr] | None = None
    annotations: dict[StrictStr, StrictStr] | None = None


class FineTuneJob(ApiModel):
    api_version: Annotated[Str, Field(json_schema_extra={"enum": [API_VERSION]})] = Field(
        alias="apiVersion", description=f"Always {API_VERSION}."
    )
    kind: Annotated[Str, Field(json_schema_extra={"enum": [KIND]})] = Field(description=f"Always {KIND}.")
    metadata: ObjectMeta
    spec: Spec = Field(description="What to fine-tune, on what, how, and where the results go.")
    status: Status | None = Field(default=None, description="Written by the operator and the trainer.")
