"""The memory plan: how much GPU memory a FineTuneJob needs per GPU, for each strategy, before anything is downloaded
or trained. It reads only the model's config.json (its shape and quantization_config), never the weights, and
imports neither torch nor transformers: `kubetune plan`, the trainer's first step in every pod and the operator all
run it.

Per GPU = weights + gradients + optimizer state (the exact parts: parameter counts from the shape, which each
technique module gives as its `plan_parameters`, times the bytes kubetune_trainer.precision holds them in, divided
over the ranks where FSDP shards them) + activations (an estimate) + the runtime's overhead.

Activations are bytes per token per decoder layer, as multiples of the hidden size, plus bytes per token for the
logits, as multiples of the vocabulary. The coefficients were fitted to peaks measured on an H200 with plain
transformers + PEFT (Llama-3.2-1B shape, bf16, sdpa; padded batch 8 and packed 4 x 2048; LoRA r16, QLoRA nf4, full;
with and without the Liger kernels; and Llama-3.1-8B QLoRA): 35 x hidden per layer is the textbook figure for a
layer's saved tensors (attention, MLP and norm inputs and outputs), LoRA with dropout keeps a dropped-out copy of
every adapted layer's input (about 30 x hidden more), QLoRA's fp32 norms about 16 x hidden more (a technique's own
part is its module's `plan_activation`), and the logits cost about 16 bytes per vocabulary entry per token (bf16
logits, their fp32 upcast, the softmax and its gradient) unless Liger's fused linear cross-entropy never
materialises them. bench/memory_plan.py checks the plan against measured peaks on a GPU and the exact parts against
allocated tensors on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kubetune.api.constants import DistributedStrategy, Objective, Optimizer, Precision
from kubetune.api.rules import sharding_refusal
from kubetune_trainer.sharding import shards_after_apply
from kubetune_trainer.techniques import module_for

GiB = 1024**3

# Activation coefficients (see the module docstring).
LAYER_ACTIVATION = 35  # x hidden bytes per token per layer, bf16 compute, no recomputation
CHECKPOINTED_LAYER = 2  # x hidden: only a layer's input is kept when activations are recomputed
LOGITS = 16  # x vocabulary bytes per token without Liger's fused cross-entropy
RUNTIME_OVERHEAD = 1.5 * GiB  # CUDA context, cuBLAS workspaces, allocator slack
FRAGMENTATION = 0.05  # of what the tensors need
# A GPU is "filled" at this fraction: the plan leaves the rest as margin (auto picks ddp only below it).
USABLE_FRACTION = 0.9

# 4-bit: half a byte per weight plus the quantization constants (an fp32 absmax per block of 64, or with
# double quantization 8-bit absmax plus an fp32 per 256 blocks: about 0.127 bits per weight).
QUANTIZED_BYTES = {4: 0.5, 8: 1.0}
QUANT_CONSTANT_BYTES = {True: 0.127 / 8, False: 4 / 64}


class PlanError(ValueError):
    """The config cannot be planned (an architecture the plan does not know): no verdict, not a failure."""


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer's shape from its config.json (Llama, Mistral, Qwen2, Gemma, Phi-3 style)."""

    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    attention_bias: str | None = None  # "qkv" (Qwen2: q, k and v have biases) or "all" (attention_bias: true)
    mlp_bias: bool = False
    quant_bits: int | None = None  # a pre-quantized checkpoint (quantization_config)

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        missing = [
            k
            for k in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size", "num_attention_heads")
            if not text.get(k)
        ]
        if missing:
            raise PlanError(f"config.json has no {', '.join(missing)}: not a decoder-only transformer the plan knows")
        if text.get("num_local_experts") or text.get("num_experts") or text.get("n_routed_experts"):
            raise PlanError("mixture-of-experts models are not planned yet")
        heads = int(text["num_attention_heads"])
        hidden = int(text["hidden_size"])
        quant = config.get("quantization_config") or {}
        bits = 4 if quant.get("load_in_4bit") else 8 if quant.get("load_in_8bit") else quant.get("bits")
        return cls(
            hidden=hidden,
            layers=int(text["num_hidden_layers"]),
            vocab=int(text["vocab_size"]),
            intermediate=int(text["intermediate_size"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            tied=bool(text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
            attention_bias="qkv"
            if text.get("model_type") == "qwen2"
            else "all"
            if text.get("attention_bias")
            else None,
            mlp_bias=bool(text.get("mlp_bias", False)),
            quant_bits=int(bits) if bits else None,
        )

    # Linear layers of one decoder block, (name, in, out): the ones LoRA's all-linear adapts.
    def block_linears(self) -> list[tuple[str, int, int]]:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [
            ("q_proj", h, q),
            ("k_proj", h, kv),
            ("v_proj", h, kv),
            ("o_proj", q, h),
            ("gate_proj", h, i),
            ("up_proj", h, i),
            ("down_proj", i, h),
        ]

    @property
    def block_linear_params(self) -> int:
        return sum(a * b for _, a, b in self.block_linears())

    @property
    def block_other_params(self) -> int:
        """Norms and biases of one block (never quantized)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = {"qkv": q + 2 * kv, "all": q + 2 * kv + self.hidden}.get(self.attention_bias or "", 0)
        mlp_bias = 2 * self.intermediate + self.hidden if self.mlp_bias else 0
        return 2 * self.hidden + bias + mlp_bias

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        blocks = self.layers * (self.block_linear_params + self.block_other_params)
        return self.embedding_params + blocks + self.hidden + self.head_params


@dataclass
class Estimate:
    strategy: str  # ddp | fsdp | fsdp+offload
    world: int
    weights: float  # bytes per GPU
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    gpu_memory: float | None = None  # bytes of one GPU, when known
    loading: float = 0.0  # bytes per GPU while the model loads, when more than training needs (before it is sharded)

    @property
    def training(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    @property
    def total(self) -> float:
        """The most the GPU holds: while training, or while loading when that is more."""
        return max(self.training, self.loading)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_memory is None else self.total <= USABLE_FRACTION * self.gpu_memory

    def gib(self, value: float) -> float:
        return round(value / GiB, 1)


@dataclass
class Plan:
    chosen: Estimate
    estimates: list[Estimate] = field(default_factory=list)
    trainable: int = 0
    total_params: int = 0
    why: str = ""
    technique: str = ""

    def status(self) -> dict:
        """status.plan as the API writes it (kubetune.api.v1alpha1.Plan)."""
        from kubetune.api.v1alpha1 import Plan as StatusPlan

        chosen = self.chosen
        known = chosen.gpu_memory is not None
        return StatusPlan(
            strategy=chosen.strategy.split("+")[0],
            cpu_offload=chosen.strategy == "fsdp+offload",
            world_size=chosen.world,
            per_gpu_gib=chosen.gib(chosen.total),
            gpu_memory_gib=chosen.gib(chosen.gpu_memory) if known else None,
            fits=bool(chosen.fits) if known else None,
        ).to_wire()


# --------------------------------------------------------------------------- parameters


def trainable_params(shape: ModelShape, spec) -> tuple[int, int]:
    """(trainable parameters, of which the technique adds beside the base); the rest of the base is frozen."""
    head = 0
    if Objective(spec.objective) == Objective.CLASSIFICATION:
        labels = (
            spec.feature_extraction.num_labels
            if spec.feature_extraction and spec.feature_extraction.num_labels
            else None
        )
        labels = labels or (
            len(spec.classification.labels) if spec.classification and spec.classification.labels else 2
        )
        head = labels * shape.hidden
    return module_for(spec.technique).plan_parameters(shape, spec, head)


def _frozen_bytes(shape: ModelShape, spec, frozen: int, precision: Precision) -> float:
    """Bytes of the frozen base: quantized linear layers for qlora (or a pre-quantized checkpoint)."""
    from kubetune_trainer.precision import FROZEN_BYTES

    quantized_bits = getattr(module_for(spec.technique), "plan_quantized_bits", None)
    bits = (quantized_bits(spec) if quantized_bits else None) or shape.quant_bits
    if not bits:
        return frozen * FROZEN_BYTES[precision]
    double = bool(spec.quantization.double_quant) if spec.quantization else True
    linear = shape.layers * shape.block_linear_params
    rest = max(0, frozen - linear)
    # prepare_model_for_kbit_training keeps the unquantized rest (embeddings, norms, head) in fp32.
    return linear * (QUANTIZED_BYTES[bits] + (QUANT_CONSTANT_BYTES[double] if bits == 4 else 0)) + rest * 4


# --------------------------------------------------------------------------- activations


def tokens_per_micro_batch(spec) -> int:
    """The most tokens one micro-batch holds: batchSize rows of maxSeqLength (padded batches are padded to their
    longest row, packed rows are full)."""
    return spec.hyperparameters.batch_size * spec.hyperparameters.max_seq_length


def activation_bytes(shape: ModelShape, spec, precision: Precision, *, liger: bool) -> float:
    hp = spec.hyperparameters
    scale = 2 if precision == Precision.FP32 else 1  # fp32 compute saves fp32 tensors
    technique_activation = getattr(module_for(spec.technique), "plan_activation", None)
    per_layer = LAYER_ACTIVATION + (technique_activation(spec) if technique_activation else 0)
    tokens = tokens_per_micro_batch(spec)
    if hp.gradient_checkpointing:
        layers = (shape.layers * CHECKPOINTED_LAYER + per_layer) * shape.hidden
    else:
        layers = shape.layers * per_layer * shape.hidden
    logits = 0 if liger else LOGITS * shape.vocab
    if Objective(spec.objective) == Objective.CLASSIFICATION:
        logits = 0  # a head of a few labels
    return tokens * (layers + logits) * scale


# --------------------------------------------------------------------------- estimates


def estimate(
    shape: ModelShape, spec, strategy: str, world: int, gpu_memory: float | None, *, precision: Precision, liger: bool
) -> Estimate:
    from kubetune_trainer.precision import TRAINED_BYTES

    trainable, added = trainable_params(shape, spec)
    frozen = shape.total_params - (trainable - added)
    weights_per_trained = {Precision.BF16_PURE: 2}.get(precision, 4)
    grads_per_trained = weights_per_trained
    optimizer_per_trained = TRAINED_BYTES[precision] - weights_per_trained - grads_per_trained
    if Optimizer(spec.hyperparameters.optimizer) in (Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT):
        optimizer_per_trained = 2
    elif Optimizer(spec.hyperparameters.optimizer) == Optimizer.SGD:
        optimizer_per_trained = 0
    elif Optimizer(spec.hyperparameters.optimizer) == Optimizer.ADAFACTOR:
        optimizer_per_trained = 1  # factored second moments: rows + columns, about nothing per weight

    # FSDP shards the base's parameters (and their gradients and optimizer state); PEFT's added parameters stay
    # whole on every rank, unless the model is sharded once the technique is applied (qlora's adapter, and under CPU
    # offload every adapter: sharded and offloaded with its base). CPU offload moves the shards to host memory.
    sharded = strategy != "ddp"
    shards = world if sharded else 1
    offload = strategy == "fsdp+offload"
    module = module_for(spec.technique)
    added_shards = shards if sharded and shards_after_apply(module, offload) else 1
    base_trained = trainable - added
    weights = _frozen_bytes(shape, spec, frozen, precision) / shards + base_trained * weights_per_trained / shards
    weights += added * weights_per_trained / added_shards
    gradients = base_trained * grads_per_trained / shards + added * grads_per_trained / added_shards
    optimizer = base_trained * optimizer_per_trained / shards + added * optimizer_per_trained / added_shards
    if offload:  # the shards, their gradients and the optimizer step live in host memory
        on_gpu = added if added_shards == 1 else 0
        weights = on_gpu * weights_per_trained
        gradients = on_gpu * grads_per_trained
        optimizer = on_gpu * optimizer_per_trained
    if sharded:
        # The unsharded parameters of the layer being computed and of the one prefetched.
        compute_bytes = 4 if precision == Precision.FP32 else 2
        weights += 2 * (shape.block_linear_params + shape.block_other_params) * compute_bytes
    activations = activation_bytes(shape, spec, precision, liger=liger)
    overhead = RUNTIME_OVERHEAD + FRAGMENTATION * (weights + gradients + optimizer + activations)
    loading = 0.0
    if sharded and getattr(module, "SHARD_AFTER_APPLY", False):
        # Such a technique loads the whole model onto every GPU (qlora: quantized as it loads, onto its own device)
        # before it is sharded: for a moment each GPU holds all of the frozen base.
        loading = _frozen_bytes(shape, spec, frozen, precision) + RUNTIME_OVERHEAD
    return Estimate(strategy, world, weights, gradients, optimizer, activations, overhead, gpu_memory, loading)


def plan(
    spec,
    config: dict,
    *,
    gpus_per_node: int | None = None,
    gpu_memory: float | None = None,
    precision: Precision | None = None,
    liger: bool | None = None,
) -> Plan:
    """Every strategy's estimate for `spec` on world size nodes x gpus, and the one `spec.distributed.strategy`
    picks (auto: ddp when a replica fits with margin, else fsdp, else fsdp with CPU offload where allowed).

    `precision`/`liger`: what runs on the GPU (default: the spec's precision, Liger when the spec asks)."""
    spec = spec.resolved()
    shape = ModelShape.from_config(config)
    hp = spec.hyperparameters
    gpus = gpus_per_node if gpus_per_node is not None else spec.resources.gpus
    world = max(1, spec.nodes * max(gpus, 1))
    precision = precision or Precision(hp.precision)
    liger = hp.liger_kernel if liger is None else liger
    distributed = spec.distributed
    requested = DistributedStrategy(distributed.strategy) if distributed else DistributedStrategy.AUTO
    offload_allowed = bool(distributed and distributed.cpu_offload)
    # Plain fsdp over one process shards nothing (a whole replica, as ddp); CPU offload still moves the parameters,
    # gradients and optimizer step to host memory there (FSDP2 over a one-rank mesh), so one GPU plans ddp and offload.
    candidates = ["ddp", "fsdp", "fsdp+offload"] if world > 1 else ["ddp", "fsdp+offload"]
    if sharding_refusal(spec):
        candidates = ["ddp"]  # the spec cannot be sharded (nor offloaded, which rides on the sharding)
    estimates = [estimate(shape, spec, s, world, gpu_memory, precision=precision, liger=liger) for s in candidates]
    by_name = {e.strategy: e for e in estimates}
    if requested == DistributedStrategy.DDP:
        chosen, why = by_name["ddp"], "strategy ddp (spec.distributed)"
    elif requested == DistributedStrategy.FSDP and offload_allowed and "fsdp+offload" in by_name:
        chosen, why = by_name["fsdp+offload"], "strategy fsdp+offload (spec.distributed)"
    elif world == 1 and (requested == DistributedStrategy.FSDP or gpu_memory is None):
        chosen, why = by_name["ddp"], "one process: a whole replica"
    elif requested == DistributedStrategy.FSDP and "fsdp" in by_name:
        chosen, why = by_name["fsdp"], "strategy fsdp (spec.distributed)"
    elif gpu_memory is None:
        chosen, why = by_name["ddp"], "strategy auto: ddp (no GPU memory known to plan with)"
    elif by_name["ddp"].fits:
        chosen, why = by_name["ddp"], "strategy auto: ddp (a whole replica fits each GPU)"
    elif "fsdp" in by_name and by_name["fsdp"].fits:
        chosen, why = by_name["fsdp"], f"strategy auto: fsdp (a replica does not fit one GPU; sharded over {world})"
    elif offload_allowed and "fsdp+offload" in by_name and by_name["fsdp+offload"].fits:
        chosen, why = by_name["fsdp+offload"], "strategy auto: fsdp with CPU offload (nothing else fits)"
    else:
        allowed = [e for e in estimates if offload_allowed or e.strategy != "fsdp+offload"]
        chosen = min(allowed, key=lambda e: e.total)
        why = f"strategy auto: nothing fits; {chosen.strategy} needs the least"
    trainable, _ = trainable_params(shape, spec)
    return Plan(chosen, estimates, trainable, shape.total_params, why, str(spec.technique))


def advice(result: Plan) -> str:
    """What to do when the chosen strategy does not fit, in words a user can act on."""
    chosen = result.chosen
    if chosen.fits is not False:
        return ""
    need, have = chosen.gib(chosen.total), chosen.gib(chosen.gpu_memory)
    options = []
    for e in result.estimates:
        if (
            e.strategy != chosen.strategy
            and e.fits
            and (e.strategy != "fsdp+offload" or not chosen.strategy.startswith("fsdp+"))
        ):
            name = "distributed.strategy: fsdp" + (
                ", distributed.cpuOffload: true" if e.strategy == "fsdp+offload" else ""
            )
            gpus = f"{e.world} GPU{'s' if e.world > 1 else ''}"
            options.append(f"`{name}` (about {e.gib(e.total)} GiB per GPU on {gpus})")
    smaller = "fewer `hyperparameters.batchSize`/`maxSeqLength`, `gradientCheckpointing: true` or more GPUs"
    options.append(smaller if result.technique == "qlora" else f"`technique: qlora`, {smaller}")
    return f"needs about {need} GiB per GPU with {chosen.strategy}, {have} available: use " + " or ".join(options)


def bytes_of(quantity) -> float | None:
    """Bytes of a Kubernetes quantity (resources.gpuMemory, e.g. "80Gi")."""
    if quantity is None:
        return None
    from kubetune.api.k8s_validation import parse_positive_quantity

    return float(parse_positive_quantity(quantity))


def describe(result: Plan) -> list[str]:
    """The plan as `kubetune plan` prints it: one line per strategy, the chosen one marked."""
    lines = [
        f"model: {result.total_params / 1e9:.2f}B parameters, {result.trainable / 1e6:.1f}M trainable; {result.why}"
    ]
    for e in result.estimates:
        mark = "*" if e.strategy == result.chosen.strategy else " "
        verdict = "" if e.fits is None else ("fits" if e.fits else "does not fit")
        lines.append(
            f"{mark} {e.strategy:<13} world {e.world:<4} per GPU {e.gib(e.total):>7} GiB  (weights {e.gib(e.weights)}, "
            f"gradients {e.gib(e.gradients)}, optimizer {e.gib(e.optimizer)}, activations {e.gib(e.activations)}, "
            f"overhead {e.gib(e.overhead)}"
            + (f"; {e.gib(e.loading)} while the whole model loads" if e.loading > e.training else "")
            + f")  {verdict}".rstrip()
        )
    if result.chosen.fits is False:
        lines.append(advice(result))
    return lines
