"""Names fixed by the FineTuneJob contract: group, kinds, enums, condition types and reasons.

Every string the operator, the trainer and the docs agree on lives here once, as a constant.
"""

from enum import StrEnum

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]


class Technique(StrEnum):
    """How the weights adapt."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"
    FEATURE_EXTRACTION = "feature-extraction"
    ADAPTER = "adapter"
    PROMPT_TUNING = "prompt-tuning"
    PREFIX_TUNING = "prefix-tuning"


class Objective(StrEnum):
    """What the model learns from."""

    CAUSAL_LM = "causal-lm"
    INSTRUCTION = "instruction"
    CLASSIFICATION = "classification"
    PREFERENCE = "preference"
    RLHF = "rlhf"


class DatasetFormat(StrEnum):
    """The shape of one dataset's rows."""

    TEXT = "text"
    PROMPT_COMPLETION = "prompt-completion"
    MESSAGES = "messages"
    PREFERENCE = "preference"
    CLASSIFICATION = "classification"
    PROMPT = "prompt"


# The logical fields each format reads; `columns` maps these to source columns.
FORMAT_FIELDS: dict[DatasetFormat, tuple[str, ...]] = {
    DatasetFormat.TEXT: ("text",),
    DatasetFormat.PROMPT_COMPLETION: ("prompt", "completion"),
    DatasetFormat.MESSAGES: ("messages",),
    DatasetFormat.PREFERENCE: ("prompt", "chosen", "rejected"),
    DatasetFormat.CLASSIFICATION: ("text", "label"),
    DatasetFormat.PROMPT: ("prompt",),
}

# Which dataset formats each objective accepts.
OBJECTIVE_FORMATS: dict[Objective, tuple[DatasetFormat, ...]] = {
    Objective.CAUSAL_LM: (DatasetFormat.TEXT,),
    Objective.INSTRUCTION: (DatasetFormat.MESSAGES, DatasetFormat.PROMPT_COMPLETION),
    Objective.CLASSIFICATION: (DatasetFormat.CLASSIFICATION,),
    Objective.PREFERENCE: (DatasetFormat.PREFERENCE,),
    Objective.RLHF: (DatasetFormat.PREFERENCE, DatasetFormat.PROMPT),
}

# Each technique's own spec section (camelCase, as users write it).
TECHNIQUE_SECTIONS: dict[str, tuple[Technique, ...]] = {
    "lora": (Technique.LORA, Technique.QLORA),
    "quantization": (Technique.QLORA,),
    "featureExtraction": (Technique.FEATURE_EXTRACTION,),
    "adapter": (Technique.ADAPTER,),
    "promptTuning": (Technique.PROMPT_TUNING,),
    "prefixTuning": (Technique.PREFIX_TUNING,),
}

# Each objective's own spec section.
OBJECTIVE_SECTIONS: dict[str, Objective] = {
    "classification": Objective.CLASSIFICATION,
    "preference": Objective.PREFERENCE,
    "rlhf": Objective.RLHF,
}

# Techniques whose trained weights are a PEFT adapter that can be merged into the base.
MERGEABLE_TECHNIQUES = (Technique.LORA, Technique.QLORA)

# Combinations the trainer cannot run, with the reason shown to the user.
UNSUPPORTED_COMBINATIONS: dict[tuple[Technique, Objective], str] = {
    (Technique.PROMPT_TUNING, Objective.RLHF): "online RL generation does not support soft prompts",
    (Technique.PREFIX_TUNING, Objective.RLHF): "online RL generation does not support key/value prefixes",
}


class PreferenceAlgorithm(StrEnum):
    """Offline preference optimisation losses (TRL DPOTrainer loss types)."""

    DPO = "dpo"
    IPO = "ipo"
    HINGE = "hinge"
    ROBUST = "robust"


class RLAlgorithm(StrEnum):
    """Online RL algorithms for the rlhf objective."""

    GRPO = "grpo"
    RLOO = "rloo"


class Precision(StrEnum):
    """What each keeps in which dtype is decided in one place, kubetune_trainer.precision."""

    BF16 = "bf16"  # mixed: fp32 master weights and optimizer state, bf16 compute
    BF16_PURE = "bf16-pure"  # everything in bf16, AdamW with Kahan-compensated updates
    FP16 = "fp16"  # mixed: fp32 master weights, fp16 compute with loss scaling
    FP32 = "fp32"


class LRScheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosineWithRestarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constantWithWarmup"
    INVERSE_SQRT = "inverseSqrt"


class Optimizer(StrEnum):
    ADAMW = "adamw"
    ADAMW_8BIT = "adamw8bit"
    PAGED_ADAMW_8BIT = "pagedAdamw8bit"
    SGD = "sgd"
    ADAFACTOR = "adafactor"


class AttentionImplementation(StrEnum):
    AUTO = "auto"
    SDPA = "sdpa"
    FLEX = "flex"
    EAGER = "eager"


class QuantizationType(StrEnum):
    NF4 = "nf4"
    FP4 = "fp4"


class AdapterActivation(StrEnum):
    RELU = "relu"
    GELU = "gelu"
    SILU = "silu"


class Phase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    VALIDATED = "Validated"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    READY = "Ready"
    # kstatus (Flux, kubectl wait, cli-utils): present only while True.
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Reason(StrEnum):
    """Machine-readable reasons on conditions and Events."""

    SPEC_VALID = "SpecValid"
    SPEC_INVALID = "SpecInvalid"
    JOB_CREATED = "JobCreated"
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    ADMITTED = "Admitted"
    PODS_PENDING = "PodsPending"
    PODS_RUNNING = "PodsRunning"
    TRAINING_COMPLETE = "TrainingComplete"
    IN_PROGRESS = "InProgress"
    SUSPENDED_BY_USER = "SuspendedByUser"
    RESUMED = "Resumed"
    RETRYING = "Retrying"
    USER_ERROR = "UserError"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    PREEMPTED = "Preempted"
    JOB_MISSING = "JobMissing"
    NAMESPACE_LIMIT = "NamespaceLimitReached"
    SPEC_CHANGE_IGNORED = "SpecChangeIgnored"
    TTL_EXPIRED = "TTLExpired"


class ExitCode:
    """Trainer exit codes; the operator's Job podFailurePolicy keys on them."""

    OK = 0
    USER_ERROR = 10  # bad spec or data: retrying cannot help, the job fails at once
    INFRA_ERROR = 20  # storage, network, hardware: retried up to spec.backoffLimit
    INTERNAL_ERROR = 30  # a bug in kubetune: retried (it may be transient), reported with details
    PREEMPTED = 143  # SIGTERM: a checkpoint was saved; the next attempt resumes from it


# Where the trainer writes its one-line reason (Kubernetes terminationMessagePath default).
TERMINATION_LOG = "/dev/termination-log"
