"""Names fixed by the FineTuneJob contract: group, kinds, enums, condition types and reasons.

Every string the operator, the trainer and the docs agree on lives here once, as a constant.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
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


class DistributedStrategy(StrEnum):
    """How the model spreads over the job's GPUs (world size = nodes x gpus)."""

    AUTO = "auto"  # ddp when one replica fits a GPU, else fsdp
    DDP = "ddp"  # a whole replica per process; gradients are averaged
    FSDP = "fsdp"  # parameters, gradients and optimizer state sharded over the processes


@dataclass(frozen=True)
class TechniqueInfo:
    """What the API knows about a technique; its training code is the trainer's techniques/<name>.py."""

    # its own spec sections (camelCase, as users write them); Spec.resolved() fills them with their defaults
    sections: tuple[str, ...] = ()
    # the trained weights are a PEFT adapter that output.mergeAdapter can merge into the base
    mergeable: bool = False
    # packed rows work (a 4D block-diagonal mask reaches the attention layers)
    supports_packing: bool = True
    # objectives it cannot run, with the reason shown to the user
    unsupported_objectives: Mapping[Objective, str] = field(default_factory=dict)
    # distributed strategies it cannot run, with the reason shown to the user
    unsupported_strategies: Mapping[DistributedStrategy, str] = field(default_factory=dict)


_NO_FSDP = (
    "its trainable virtual tokens live in PEFT's prompt encoder outside the decoder layers FSDP shards and are fed "
    "in as {what}, which FSDP's sharded forward does not cover; the frozen base gains little from sharding a few "
    "thousand trainable parameters: use strategy ddp"
)

# One row per technique: a new technique is one Technique value, one row here and its section model.
TECHNIQUES: dict[Technique, TechniqueInfo] = {
    Technique.FULL: TechniqueInfo(),
    Technique.LORA: TechniqueInfo(sections=("lora",), mergeable=True),
    Technique.QLORA: TechniqueInfo(sections=("lora", "quantization"), mergeable=True),
    Technique.FEATURE_EXTRACTION: TechniqueInfo(sections=("featureExtraction",)),
    Technique.ADAPTER: TechniqueInfo(sections=("adapter",)),
    Technique.PROMPT_TUNING: TechniqueInfo(
        sections=("promptTuning",),
        # PEFT prepends the soft prompt to a 2D attention mask: no 4D block-diagonal mask for packed rows
        supports_packing=False,
        unsupported_objectives={Objective.RLHF: "online RL generation does not support soft prompts"},
        unsupported_strategies={DistributedStrategy.FSDP: _NO_FSDP.format(what="input embeddings")},
    ),
    Technique.PREFIX_TUNING: TechniqueInfo(
        sections=("prefixTuning",),
        # PEFT extends a 2D attention mask with the prefix positions: no 4D block-diagonal mask for packed rows
        supports_packing=False,
        unsupported_objectives={Objective.RLHF: "online RL generation does not support key/value prefixes"},
        unsupported_strategies={DistributedStrategy.FSDP: _NO_FSDP.format(what="past key/values")},
    ),
}


@dataclass(frozen=True)
class EvalStage:
    """One trainer of an objective that evaluates: on the datasets of `formats`, reporting `metrics`.

    With one dataset of those formats the trainer reports eval_<metric>; with several, eval_<name>_<metric> for
    each dataset that has evaluation data (evalUri or evalFraction), as transformers names a dict of eval sets."""

    formats: tuple[DatasetFormat, ...]
    metrics: tuple[str, ...] = ("loss",)
    # rlhf's reward-model stage runs only when spec.rlhf.rewardModel.uri is empty
    trains_reward_model: bool = False


@dataclass(frozen=True)
class ObjectiveInfo:
    """What the API knows about an objective; its training code is the trainer's objectives/<name>.py."""

    formats: tuple[DatasetFormat, ...]  # the dataset formats it reads
    section: str | None = None  # its own spec section (camelCase); Spec.resolved() fills it with its defaults
    evaluation: tuple[EvalStage, ...] = ()
    packs: bool = False  # hyperparameters.packing applies
    # where dropout (lora.dropout included) is turned off, and why; None = dropout applies
    dropout_off: str | None = None


# One row per objective.
OBJECTIVES: dict[Objective, ObjectiveInfo] = {
    Objective.CAUSAL_LM: ObjectiveInfo(
        (DatasetFormat.TEXT,), evaluation=(EvalStage((DatasetFormat.TEXT,)),), packs=True
    ),
    Objective.INSTRUCTION: ObjectiveInfo(
        (DatasetFormat.MESSAGES, DatasetFormat.PROMPT_COMPLETION),
        evaluation=(EvalStage((DatasetFormat.MESSAGES, DatasetFormat.PROMPT_COMPLETION)),),
        packs=True,
    ),
    Objective.CLASSIFICATION: ObjectiveInfo(
        (DatasetFormat.CLASSIFICATION,),
        section="classification",
        evaluation=(EvalStage((DatasetFormat.CLASSIFICATION,), metrics=("loss", "accuracy")),),
    ),
    Objective.PREFERENCE: ObjectiveInfo(
        (DatasetFormat.PREFERENCE,),
        section="preference",
        evaluation=(EvalStage((DatasetFormat.PREFERENCE,)),),
        dropout_off="TRL's DPO trainer turns every dropout off so the policy's and the reference's log-probabilities "
        "are computed alike",
    ),
    Objective.RLHF: ObjectiveInfo(
        (DatasetFormat.PREFERENCE, DatasetFormat.PROMPT),
        section="rlhf",
        evaluation=(
            EvalStage((DatasetFormat.PREFERENCE,), trains_reward_model=True),
            EvalStage((DatasetFormat.PROMPT,)),
        ),
        dropout_off="TRL's reward trainer turns every dropout off in the reward-model stage so chosen and rejected "
        "are scored alike (the policy stage keeps it)",
    ),
}

# Derived views, for the code that asks one question.
OBJECTIVE_FORMATS: dict[Objective, tuple[DatasetFormat, ...]] = {o: info.formats for o, info in OBJECTIVES.items()}
TECHNIQUE_SECTIONS: dict[str, tuple[Technique, ...]] = {
    section: tuple(t for t, info in TECHNIQUES.items() if section in info.sections)
    for section in dict.fromkeys(s for info in TECHNIQUES.values() for s in info.sections)
}
OBJECTIVE_SECTIONS: dict[str, Objective] = {info.section: o for o, info in OBJECTIVES.items() if info.section}
# Techniques whose trained weights are a PEFT adapter that can be merged into the base.
MERGEABLE_TECHNIQUES = tuple(t for t, info in TECHNIQUES.items() if info.mergeable)
# Combinations the trainer cannot run, with the reason shown to the user.
UNSUPPORTED_COMBINATIONS: dict[tuple[Technique, Objective], str] = {
    (t, o): reason for t, info in TECHNIQUES.items() for o, reason in info.unsupported_objectives.items()
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
    CHILD_REJECTED = "ChildRejected"  # the API server refused an object the operator made
    POLICY_DENIED = "PolicyDenied"  # the platform's policy refuses the spec, naming the rule
    SECRET_NOT_FOUND = "SecretNotFound"  # a Secret the spec names does not exist
    WAITING_FOR_MODEL_CACHE = "WaitingForModelCache"
    DOES_NOT_FIT = "DoesNotFit"  # the memory plan says the job cannot fit its GPUs
    QUEUE_NOT_FOUND = "QueueNotFound"  # the Kueue LocalQueue of spec.queueName is missing, or Kueue is not installed
    REOPENED = "Reopened"  # a job failed for its backoffLimit or deadline runs again: the spec now allows more
    RESUME_SOURCE_NOT_FOUND = "ResumeSourceNotFound"  # spec.resumeFrom names a job that is missing or has no checkpoint
    PLANNED = "Planned"  # an Event: the trainer's memory plan (status.plan)


class ExitCode:
    """Trainer exit codes; the operator's Job podFailurePolicy keys on them."""

    OK = 0
    USER_ERROR = 10  # bad spec or data: retrying cannot help, the job fails at once
    INFRA_ERROR = 20  # storage, network, hardware: retried up to spec.backoffLimit
    INTERNAL_ERROR = 30  # a bug in kubetune: retried (it may be transient), reported with details
    PREEMPTED = 143  # SIGTERM: a checkpoint was saved; the next attempt resumes from it


# Where the trainer writes its one-line reason (Kubernetes terminationMessagePath default).
TERMINATION_LOG = "/dev/termination-log"

# Secret keys the trainer reads, by what they unlock (wired from credentialsSecret under role-prefixed names);
# spec.pod.env may not carry them as plain values.
HF_KEYS = ("HF_TOKEN",)
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
WANDB_KEYS = ("WANDB_API_KEY",)
CREDENTIAL_KEYS: tuple[str, ...] = (*HF_KEYS, *S3_KEYS, *MLFLOW_KEYS, *WANDB_KEYS)

# The trainer pod as the operator builds it: what spec.pod may not collide with.
SPEC_MOUNT = "/etc/kubetune"  # the resolved spec (a downward API volume of the pod's annotation)
SCRATCH_MOUNT = "/scratch"  # HOME, HF_HOME and TMPDIR (an emptyDir)
SHARED_MEMORY_MOUNT = "/dev/shm"  # data-loader workers' shared memory (a memory emptyDir)
SERVICE_ACCOUNT_TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"  # the progress reporter's token
TRAINER_VOLUMES: dict[str, str] = {
    "spec": SPEC_MOUNT,
    "scratch": SCRATCH_MOUNT,
    "dshm": SHARED_MEMORY_MOUNT,
    "reporter-token": SERVICE_ACCOUNT_TOKEN_MOUNT,
}
# Paths in the trainer container no spec.pod volume may be mounted at, under or above (above would hide them).
TRAINER_PATHS: tuple[str, ...] = (*TRAINER_VOLUMES.values(), TERMINATION_LOG)
# Environment variables the operator sets on the trainer: all of KUBETUNE_* (run identity, credentials by role)
# and these; NVIDIA_VISIBLE_DEVICES and AMD_VISIBLE_DEVICES keep a pod that asked for no GPU from seeing the node's
# GPUs (the NVIDIA and AMD container runtimes read them).
OPERATOR_ENV_PREFIX = "KUBETUNE_"
OPERATOR_ENV: tuple[str, ...] = (
    "HOME",
    "HF_HOME",
    "TMPDIR",
    "PYTHONUNBUFFERED",
    "NVIDIA_VISIBLE_DEVICES",
    "AMD_VISIBLE_DEVICES",
)
# Label and annotation keys on the trainer pods that others own: the operator's (kubetune.dev/ and the
# managed-by label its watches select on), Kueue's and the Job controller's (batch.kubernetes.io/, and the
# legacy job-name and controller-uid labels its selector matches). A domain covers its subdomains too.
RESERVED_LABEL_DOMAINS: tuple[str, ...] = (GROUP, "kueue.x-k8s.io", "batch.kubernetes.io")
RESERVED_LABEL_KEYS: tuple[str, ...] = ("app.kubernetes.io/managed-by", "job-name", "controller-uid")
