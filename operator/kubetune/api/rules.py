"""Cross-field rules of a FineTuneJob spec, each written twice side by side: as a Python check
(precise paths and the offending values in the message) and as a CEL expression that the CRD
carries, so the API server rejects the same manifests even when the operator is down.

tests/api/test_schema.py evaluates every CEL expression against the same manifests as the
Python checks, so the two halves cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from kubetune.api import k8s_validation as k8s
from kubetune.api.constants import (
    FORMAT_FIELDS,
    MERGEABLE_TECHNIQUES,
    OBJECTIVE_FORMATS,
    OBJECTIVE_SECTIONS,
    OBJECTIVES,
    TECHNIQUE_SECTIONS,
    TECHNIQUES,
    UNSUPPORTED_COMBINATIONS,
    DatasetFormat,
    DistributedStrategy,
    EvalStage,
    Objective,
    Optimizer,
    Precision,
    Technique,
)
from kubetune.api.v1alpha1 import SECTIONS, Dataset, Rlhf, Spec

# (path relative to spec, message)
Finding = tuple[str, str]


@dataclass(frozen=True)
class Rule:
    field_path: str  # where the CRD reports a CEL failure, relative to spec (e.g. ".lora")
    cel: str  # evaluated with self = spec; true = valid
    message: str  # the API server's message when the CEL rule fails
    check: Callable[[Spec], Iterator[Finding]]


def _quote(values) -> str:
    return ", ".join(str(v) for v in values)


def _cel_list(values) -> str:
    return "[" + ", ".join(k8s.cel_string(str(v)) for v in values) + "]"


def _section_rule(section: str, allowed, kind: str) -> Rule:
    allowed = tuple(allowed)
    attr, _ = SECTIONS[section]
    names = " or ".join(str(v) for v in allowed)

    def check(spec: Spec) -> Iterator[Finding]:
        value = getattr(spec, kind)
        if getattr(spec, attr) is not None and value not in allowed:
            yield section, f"only allowed when spec.{kind} is {names} (spec.{kind} is {value})"

    return Rule(
        field_path=f".{section}",
        cel=f"!has(self.{section}) || self.{kind} in {_cel_list(allowed)}",
        message=f"spec.{section} is only allowed when spec.{kind} is {names}",
        check=check,
    )


def _formats_rule(objective: Objective) -> Rule:
    formats = OBJECTIVE_FORMATS[objective]

    def check(spec: Spec) -> Iterator[Finding]:
        if spec.objective != objective:
            return
        for i, ds in enumerate(spec.datasets):
            if ds.format not in formats:
                yield (
                    f"datasets[{i}].format",
                    f"objective {objective} needs format {' or '.join(map(str, formats))} (got {ds.format})",
                )

    return Rule(
        field_path=".datasets",
        cel=f"self.objective != '{objective}' || self.datasets.all(d, d.format in {_cel_list(formats)})",
        message=f"objective {objective} needs datasets of format {' or '.join(map(str, formats))}",
        check=check,
    )


def _check_columns(spec: Spec) -> Iterator[Finding]:
    for i, ds in enumerate(spec.datasets):
        fields = FORMAT_FIELDS[ds.format]
        for key in ds.columns:
            if key not in fields:
                yield f"datasets[{i}].columns.{key}", f"not a field of format {ds.format} (fields: {_quote(fields)})"


def _cel_columns() -> str:
    clauses = [
        f"(d.format == '{fmt}' && d.columns.all(k, k in {_cel_list(fields)}))" for fmt, fields in FORMAT_FIELDS.items()
    ]
    return "self.datasets.all(d, !has(d.columns) || " + " || ".join(clauses) + ")"


def _check_unique_names(spec: Spec) -> Iterator[Finding]:
    seen: dict[str, int] = {}
    for i, ds in enumerate(spec.datasets):
        if ds.name in seen:
            yield (
                f"datasets[{i}].name",
                f"duplicate dataset name {ds.name!r} (also datasets[{seen[ds.name]}]); "
                "with two or more datasets give each a unique name",
            )
        seen.setdefault(ds.name, i)


def _check_eval_source(spec: Spec) -> Iterator[Finding]:
    for i, ds in enumerate(spec.datasets):
        if ds.eval_uri is not None and ds.eval_fraction is not None:
            yield f"datasets[{i}].evalFraction", "set either evalUri or evalFraction, not both"


def _has_eval_data(ds: Dataset) -> bool:
    return ds.eval_uri is not None or ds.eval_fraction is not None


def _reward_model_given(spec: Spec) -> bool:
    return spec.rlhf is not None and bool(spec.rlhf.reward_model.uri)


def _stage_metrics(spec: Spec, stage: EvalStage) -> list[str]:
    """The evaluation metrics one trainer of the run reports; [] when it does not evaluate (or does not run)."""
    if stage.trains_reward_model and _reward_model_given(spec):
        return []
    datasets = [ds for ds in spec.datasets if ds.format in stage.formats]
    evaluated = [ds for ds in datasets if _has_eval_data(ds)]
    if len(datasets) == 1:
        return [f"eval_{metric}" for ds in evaluated for metric in stage.metrics]
    return [f"eval_{ds.name}_{metric}" for ds in evaluated for metric in stage.metrics]


def evaluation_metrics(spec: Spec) -> list[list[str]]:
    """The metrics each evaluating trainer of the run reports (rlhf: the reward-model stage, then the policy);
    early stopping watches one metric that every one of them reports."""
    return [metrics for stage in OBJECTIVES[spec.objective].evaluation if (metrics := _stage_metrics(spec, stage))]


def _eval_formats(objective: Objective) -> str:
    formats = sorted({f for stage in OBJECTIVES[objective].evaluation for f in stage.formats})
    return " or ".join(formats)


def _check_early_stopping_data(spec: Spec) -> Iterator[Finding]:
    if spec.evaluation.early_stopping is not None and not evaluation_metrics(spec):
        where = f" of format {_eval_formats(spec.objective)}" if spec.objective == Objective.RLHF else ""
        yield "evaluation.earlyStopping", f"needs evaluation data: set evalUri or evalFraction on a dataset{where}"


def _check_early_stopping_metric(spec: Spec) -> Iterator[Finding]:
    stopping = spec.evaluation.early_stopping
    stages = evaluation_metrics(spec)
    if stopping is None or not stages or all(stopping.metric in metrics for metrics in stages):
        return
    if len(stages) == 1:
        reported = f"it reports {', '.join(stages[0])}"
    else:
        reported = (
            f"the reward-model stage reports {', '.join(stages[0])} and the policy stage {', '.join(stages[1])}; "
            "early stopping watches one metric both report (else drop the evaluation data of one stage)"
        )
    yield "evaluation.earlyStopping.metric", f"{stopping.metric!r} is not reported by this run: {reported}"


_HAS_EVAL = "(has(d.evalUri) || has(d.evalFraction))"
_REWARD_MODEL_GIVEN = (
    "(has(self.rlhf) && has(self.rlhf.rewardModel) && has(self.rlhf.rewardModel.uri) && "
    "self.rlhf.rewardModel.uri != '')"
)


def _cel_stage(stage: EvalStage) -> tuple[str, str]:
    """(the stage evaluates, the watched metric is one it reports) as CEL over the spec."""
    of_stage = f"d.format in {_cel_list(stage.formats)}"
    evaluates = f"self.datasets.exists(d, {of_stage} && {_HAS_EVAL})"
    if stage.trains_reward_model:
        evaluates = f"(!{_REWARD_MODEL_GIVEN} && {evaluates})"
    metric = "self.evaluation.earlyStopping.metric"
    single = f"{metric} in {_cel_list(f'eval_{m}' for m in stage.metrics)}"
    named = " || ".join(f"{metric} == 'eval_' + d.name + '_{m}'" for m in stage.metrics)
    several = f"self.datasets.exists(d, {of_stage} && {_HAS_EVAL} && ({named}))"
    reports = f"(self.datasets.exists_one(d, {of_stage}) ? {single} : {several})"
    return evaluates, reports


def _cel_early_stopping() -> tuple[str, str]:
    """(needs evaluation data, watches a metric every evaluating stage reports) as CEL, per objective."""
    has_data, reported = [], []
    for objective, info in OBJECTIVES.items():
        stages = [_cel_stage(stage) for stage in info.evaluation]
        is_it = f"self.objective == '{objective}'"
        has_data.append(f"({is_it} && ({' || '.join(evaluates for evaluates, _ in stages)}))")
        reported.append(f"({is_it} && {' && '.join(f'(!{evaluates} || {reports})' for evaluates, reports in stages)})")
    watched = "!has(self.evaluation.earlyStopping) || "
    return watched + " || ".join(has_data), watched + " || ".join(reported)


_CEL_EARLY_STOPPING_DATA, _CEL_EARLY_STOPPING_METRIC = _cel_early_stopping()


def _check_rlhf_prompts(spec: Spec) -> Iterator[Finding]:
    if spec.objective == Objective.RLHF and not any(ds.format == DatasetFormat.PROMPT for ds in spec.datasets):
        yield "datasets", "objective rlhf needs at least one dataset of format prompt for the RL stage"


def _check_rlhf_reward(spec: Spec) -> Iterator[Finding]:
    if spec.objective != Objective.RLHF:
        return
    has_model = _reward_model_given(spec)
    has_preferences = any(ds.format == DatasetFormat.PREFERENCE for ds in spec.datasets)
    if not has_model and not has_preferences:
        yield (
            "rlhf.rewardModel.uri",
            "objective rlhf needs a reward model: set spec.rlhf.rewardModel.uri or add a dataset of format preference "
            "to train one",
        )


_DEFAULT_GENERATIONS = Rlhf.model_fields["num_generations"].default


def _check_rlhf_batch(spec: Spec) -> Iterator[Finding]:
    if spec.objective != Objective.RLHF:
        return
    generations = spec.rlhf.num_generations if spec.rlhf else _DEFAULT_GENERATIONS
    hp = spec.hyperparameters
    # TRL samples numGenerations completions per prompt within one global generation batch.
    processes = max(spec.resources.gpus, 1) * spec.nodes
    per_step = hp.batch_size * hp.gradient_accumulation_steps * processes
    if per_step % generations:
        yield (
            "rlhf.numGenerations",
            f"batchSize x gradientAccumulationSteps x processes (gpus x nodes) = {per_step} "
            f"must be a multiple of numGenerations ({generations})",
        )


_LM_HEAD = "(^|,)lm_head(,|$)"


def _check_lm_head(spec: Spec) -> Iterator[Finding]:
    # TRL's DPO/GRPO/RLOO read log-probabilities through lm_head.weight directly: a LoRA-wrapped
    # lm_head breaks them.
    if spec.objective in (Objective.PREFERENCE, Objective.RLHF) and spec.lora is not None:
        if re.search(_LM_HEAD, spec.lora.target_modules):
            yield "lora.targetModules", f"lm_head cannot carry LoRA with objective {spec.objective}; leave it out"


_MERGE_MESSAGE = f"only {' and '.join(MERGEABLE_TECHNIQUES)} adapters can be merged"


def _check_merge(spec: Spec) -> Iterator[Finding]:
    if spec.output.merge_adapter and spec.technique not in MERGEABLE_TECHNIQUES:
        yield "output.mergeAdapter", f"{_MERGE_MESSAGE} (spec.technique is {spec.technique})"


def _check_combination(spec: Spec) -> Iterator[Finding]:
    reason = UNSUPPORTED_COMBINATIONS.get((spec.technique, spec.objective))
    if reason:
        yield "technique", f"technique {spec.technique} cannot be used with objective {spec.objective}: {reason}"


def _cel_combinations() -> str:
    pairs = [f"(self.technique == '{t}' && self.objective == '{o}')" for t, o in UNSUPPORTED_COMBINATIONS]
    return "!(" + " || ".join(pairs) + ")"


def _check_labels(spec: Spec) -> Iterator[Finding]:
    fe, cls = spec.feature_extraction, spec.classification
    if fe and cls and fe.num_labels and cls.labels and fe.num_labels != len(cls.labels):
        yield (
            "classification.labels",
            f"names {len(cls.labels)} classes but spec.featureExtraction.numLabels is {fe.num_labels}",
        )


def _check_cpu_offload(spec: Spec) -> Iterator[Finding]:
    if spec.distributed and spec.distributed.cpu_offload and spec.distributed.strategy == DistributedStrategy.DDP:
        yield "distributed.cpuOffload", "needs strategy fsdp or auto: ddp keeps a whole replica on every GPU"


def _strategy_rule(technique, strategy: DistributedStrategy, reason: str) -> Rule:
    """A technique that cannot run a strategy; CPU offload needs FSDP, so it goes with fsdp."""
    offload = strategy == DistributedStrategy.FSDP

    def check(spec: Spec) -> Iterator[Finding]:
        d = spec.distributed
        if spec.technique != technique or d is None:
            return
        if d.strategy == strategy:
            yield "distributed.strategy", f"technique {technique} cannot use strategy {strategy}: {reason}"
        elif offload and d.cpu_offload:
            yield "distributed.cpuOffload", f"needs FSDP, which technique {technique} cannot use: {reason}"

    uses = f"self.distributed.strategy == '{strategy}'" + (" || self.distributed.cpuOffload" if offload else "")
    return Rule(
        ".distributed",
        f"self.technique != '{technique}' || !has(self.distributed) || !({uses})",
        f"technique {technique} cannot use strategy {strategy}"
        + (" (nor cpuOffload, which needs it)" if offload else "")
        + f": {reason}",
        check,
    )


_INT8_UNSHARDABLE = (
    "8-bit weights (spec.quantization.bits 8) are held as int8, which FSDP cannot shard: use bits 4, or strategy ddp"
)


def sharding_refusal(spec: Spec) -> str | None:
    """Why the spec cannot be sharded (FSDP, and CPU offload, which rides on it), whatever its strategy says; None
    when it can. The memory plan asks it before it offers fsdp."""
    reason = TECHNIQUES[Technique(spec.technique)].unsupported_strategies.get(DistributedStrategy.FSDP)
    if reason:
        return reason
    if spec.technique == Technique.QLORA and spec.quantization is not None and spec.quantization.bits == 8:
        return _INT8_UNSHARDABLE
    return None


def _check_int8_sharding(spec: Spec) -> Iterator[Finding]:
    d, q = spec.distributed, spec.quantization
    if spec.technique != Technique.QLORA or q is None or q.bits != 8 or d is None:
        return
    if d.strategy == DistributedStrategy.FSDP:
        yield "distributed.strategy", f"technique qlora cannot use strategy fsdp here: {_INT8_UNSHARDABLE}"
    elif d.cpu_offload:
        yield "distributed.cpuOffload", f"needs FSDP, which technique qlora cannot use here: {_INT8_UNSHARDABLE}"


def _check_pure_bf16(spec: Spec) -> Iterator[Finding]:
    hp = spec.hyperparameters
    if hp.precision == Precision.BF16_PURE and hp.optimizer != Optimizer.ADAMW:
        yield (
            "hyperparameters.optimizer",
            f"precision bf16-pure needs optimizer adamw (its Kahan-compensated AdamW keeps small updates in bf16; "
            f"optimizer is {hp.optimizer})",
        )


RULES: list[Rule] = [
    *[_section_rule(section, techniques, "technique") for section, techniques in TECHNIQUE_SECTIONS.items()],
    *[_section_rule(section, (objective,), "objective") for section, objective in OBJECTIVE_SECTIONS.items()],
    *[_formats_rule(objective) for objective in Objective],
    Rule(
        ".datasets", _cel_columns(), "a datasets[].columns key is not a field of that dataset's format", _check_columns
    ),
    Rule(
        ".datasets",
        "self.datasets.all(d, self.datasets.exists_one(e, e.name == d.name))",
        "dataset names must be unique",
        _check_unique_names,
    ),
    Rule(
        ".datasets",
        "self.datasets.all(d, !(has(d.evalUri) && has(d.evalFraction)))",
        "set either evalUri or evalFraction on a dataset, not both",
        _check_eval_source,
    ),
    Rule(
        ".evaluation.earlyStopping",
        _CEL_EARLY_STOPPING_DATA,
        "early stopping needs evaluation data: set evalUri or evalFraction on a dataset (rlhf: of a stage that runs)",
        _check_early_stopping_data,
    ),
    Rule(
        ".evaluation.earlyStopping.metric",
        _CEL_EARLY_STOPPING_METRIC,
        "evaluation.earlyStopping.metric must be a metric the run reports: eval_loss (eval_accuracy for "
        "classification) with one dataset, eval_<name>_loss for each dataset with evaluation data with several",
        _check_early_stopping_metric,
    ),
    Rule(
        ".datasets",
        "self.objective != 'rlhf' || self.datasets.exists(d, d.format == 'prompt')",
        "objective rlhf needs at least one dataset of format prompt",
        _check_rlhf_prompts,
    ),
    Rule(
        ".rlhf",
        "self.objective != 'rlhf' || (has(self.rlhf) && has(self.rlhf.rewardModel) && has(self.rlhf.rewardModel.uri) "
        "&& self.rlhf.rewardModel.uri != '') || self.datasets.exists(d, d.format == 'preference')",
        "objective rlhf needs spec.rlhf.rewardModel.uri or a dataset of format preference",
        _check_rlhf_reward,
    ),
    Rule(
        ".rlhf",
        "self.objective != 'rlhf' || (self.hyperparameters.batchSize * self.hyperparameters.gradientAccumulationSteps "
        "* (self.resources.gpus > 1 ? self.resources.gpus : 1) * self.nodes) "
        f"% (has(self.rlhf) ? self.rlhf.numGenerations : {_DEFAULT_GENERATIONS}) == 0",
        "batchSize x gradientAccumulationSteps x gpus x nodes must be a multiple of spec.rlhf.numGenerations",
        _check_rlhf_batch,
    ),
    Rule(
        ".lora.targetModules",
        "!(self.objective in ['preference', 'rlhf'] && has(self.lora) && "
        f"self.lora.targetModules.matches('{_LM_HEAD}'))",
        "lm_head cannot carry LoRA with objective preference or rlhf",
        _check_lm_head,
    ),
    Rule(
        ".output.mergeAdapter",
        f"!self.output.mergeAdapter || self.technique in {_cel_list(MERGEABLE_TECHNIQUES)}",
        _MERGE_MESSAGE,
        _check_merge,
    ),
    Rule(".technique", _cel_combinations(), "this technique cannot be used with this objective", _check_combination),
    Rule(
        ".distributed.cpuOffload",
        "!has(self.distributed) || !self.distributed.cpuOffload || self.distributed.strategy != 'ddp'",
        "distributed.cpuOffload needs strategy fsdp or auto",
        _check_cpu_offload,
    ),
    *[
        _strategy_rule(technique, strategy, reason)
        for technique, info in TECHNIQUES.items()
        for strategy, reason in info.unsupported_strategies.items()
    ],
    Rule(
        ".distributed",
        "self.technique != 'qlora' || !has(self.quantization) || self.quantization.bits != 8 || "
        "!has(self.distributed) || !(self.distributed.strategy == 'fsdp' || self.distributed.cpuOffload)",
        "technique qlora with spec.quantization.bits 8 cannot use strategy fsdp (nor cpuOffload, which needs it): "
        + _INT8_UNSHARDABLE,
        _check_int8_sharding,
    ),
    Rule(
        ".hyperparameters.optimizer",
        "self.hyperparameters.precision != 'bf16-pure' || self.hyperparameters.optimizer == 'adamw'",
        "precision bf16-pure needs optimizer adamw",
        _check_pure_bf16,
    ),
    # (label uniqueness is the CRD's x-kubernetes-list-type: set, which the API server checks in linear time)
    Rule(
        ".classification",
        "!has(self.classification) || !has(self.classification.labels) || "
        "!has(self.featureExtraction) || !has(self.featureExtraction.numLabels) || "
        "self.featureExtraction.numLabels == size(self.classification.labels)",
        "classification labels must agree with spec.featureExtraction.numLabels",
        _check_labels,
    ),
]


@dataclass(frozen=True)
class JobRule:
    """A rule between the object's metadata and its spec; its CEL sits at the CRD's root (self = the object)."""

    field_path: str  # relative to the object, e.g. ".metadata.name"
    cel: str
    message: str
    check: Callable[[str, Spec], Iterator[Finding]]  # (metadata.name, spec); paths relative to the object


def _check_service_name(name: str, spec: Spec) -> Iterator[Finding]:
    # A multi-node job's headless Service is <name>-workers, and Service names are DNS-1035 labels.
    problems = k8s.is_dns1035_label(name) if spec.nodes > 1 else []
    if problems:
        yield (
            "metadata.name",
            f"must start with a letter when spec.nodes > 1 (got {name!r}): the headless Service that connects the "
            f"nodes is named after the job, and a Service name {'; '.join(problems)}",
        )


def _check_resume_self(name: str, spec: Spec) -> Iterator[Finding]:
    if spec.resume_from == name:
        yield (
            "spec.resumeFrom",
            f"names this FineTuneJob itself ({name!r}): a job resumes its own checkpoints by itself; give another "
            "job's name or a checkpoint URI",
        )


JOB_RULES: list[JobRule] = [
    JobRule(
        ".metadata.name",
        f"self.spec.nodes <= 1 || self.metadata.name.matches('{k8s.DNS1035_LABEL_PATTERN}')",
        "metadata.name must start with a letter when spec.nodes > 1 (the headless Service between the nodes is "
        "named after it, and Service names are DNS-1035 labels)",
        _check_service_name,
    ),
    JobRule(
        ".spec.resumeFrom",
        "!has(self.spec.resumeFrom) || self.spec.resumeFrom != self.metadata.name",
        "spec.resumeFrom cannot name the FineTuneJob itself",
        _check_resume_self,
    ),
]


# --------------------------------------------------------------------------- notices
# A valid spec with a setting that will not take effect: the job runs, and the user hears why the setting
# changes nothing. Only settings the user wrote are reported (a default that does not apply is not news).


def _notice_dropout(spec: Spec) -> Iterator[Finding]:
    reason = OBJECTIVES[spec.objective].dropout_off
    lora = spec.lora
    if reason is None or lora is None or "dropout" not in lora.model_fields_set or lora.dropout == 0:
        return
    if spec.objective == Objective.RLHF and _reward_model_given(spec):
        return  # no reward-model stage: the policy stage keeps dropout
    yield "lora.dropout", f"{lora.dropout} is not applied with objective {spec.objective}: {reason}"


def _notice_packing(spec: Spec) -> Iterator[Finding]:
    hp = spec.hyperparameters
    if "packing" not in hp.model_fields_set or not hp.packing:
        return
    if not OBJECTIVES[spec.objective].packs:
        yield "hyperparameters.packing", f"has no effect with objective {spec.objective}, which does not pack rows"
    elif not TECHNIQUES[spec.technique].supports_packing:
        yield (
            "hyperparameters.packing",
            f"is off for technique {spec.technique}: its attention mask cannot keep packed examples apart, so "
            "examples are padded instead",
        )


def _notice_single_process(spec: Spec) -> Iterator[Finding]:
    d = spec.distributed
    if d is not None and d.strategy == DistributedStrategy.DDP and spec.nodes * max(spec.resources.gpus, 1) == 1:
        yield "distributed.strategy", "ddp has nothing to spread with one process (nodes x gpus = 1)"


def _notice_liger_without_gpu(spec: Spec) -> Iterator[Finding]:
    hp = spec.hyperparameters
    if "liger_kernel" in hp.model_fields_set and hp.liger_kernel and spec.resources.gpus == 0:
        yield "hyperparameters.ligerKernel", "has no effect without a GPU (resources.gpus is 0)"


def _notice_eval_steps_without_data(spec: Spec) -> Iterator[Finding]:
    ev = spec.evaluation
    if "every_steps" in ev.model_fields_set and ev.every_steps and not evaluation_metrics(spec):
        yield "evaluation.everySteps", "has no effect: no dataset has evaluation data (evalUri or evalFraction)"


NOTICES: list[Callable[[Spec], Iterator[Finding]]] = [
    _notice_dropout,
    _notice_packing,
    _notice_single_process,
    _notice_liger_without_gpu,
    _notice_eval_steps_without_data,
]


def notice_findings(spec: Spec) -> list[Finding]:
    """Settings of a valid spec that will not take effect; paths relative to spec."""
    return [finding for notice in NOTICES for finding in notice(spec)]


def job_findings(name: str, spec: Spec) -> list[Finding]:
    """Problems between a job's name and its spec; paths relative to the object."""
    return [finding for rule in JOB_RULES for finding in rule.check(name, spec)]


def cross_field_findings(spec: Spec) -> list[Finding]:
    """All cross-field problems of a spec that passed per-field validation."""
    findings: list[Finding] = []
    for rule in RULES:
        for finding in rule.check(spec):
            if finding not in findings:
                findings.append(finding)
    return findings
