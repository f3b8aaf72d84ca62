"""`TrainConfig`: every setting of a training run, any objective (importable without torch)."""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from orpo_pipeline.evaluation.config import EvalAfter

Tracker = Literal["jsonl", "tensorboard", "mlflow"]
ObjectiveName = Literal["orpo", "sft", "dpo", "simpo", "cpo", "kto"]


class Settings(BaseModel):
    """Shared settings: unknown keys are errors, configs are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class LoraConfig(Settings):
    """Train low-rank adapters instead of all weights (peft LoRA)."""

    r: int = Field(default=16, ge=1)
    """Rank of the adapter matrices."""
    alpha: int = Field(default=32, ge=1)
    """Scaling numerator: the adapter output is multiplied by alpha / r."""
    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the adapter input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]), or every linear layer but the LM head."""
    merge_on_save: bool = True
    """Merge the adapters into the base weights for `final/`; otherwise save the adapter only."""


class TrainConfig(Settings):
    """A training run: model, data, objective, optimisation, evaluation and checkpoints."""

    name: str = Field(default="orpo", pattern=r"^[A-Za-z0-9_.-]+$")
    """Run name; the run directory is `<output_dir>/<name>-<UTC time>-<config hash8>/`."""
    model: str = "default"
    """The model: "default" (SmolLM2-135M-Instruct), a checkpoint directory or a hub id."""
    chat_template: str | None = None
    """Jinja chat template replacing the tokenizer's own."""
    train_pairs: Path
    """Canonical pairs to train on (.parquet or .jsonl); sft also takes SFT records and kto
    labelled completions (`prompt`, `completion`, `label`), see the README."""
    eval_pairs: Path | None = None
    """Held-out data of the same kind; without it there is no evaluation."""
    output_dir: Path = Path("runs/train")
    """Where run directories are created."""

    objective: ObjectiveName = "orpo"
    """The loss: orpo, sft (NLL on the chosen answers), dpo, simpo, cpo or kto (see the README)."""
    beta: float = Field(default=0.1, ge=0)
    """β of the objective. ORPO: weight of the odds-ratio term (λ in the paper, `alpha` in
    xfactlab/orpo); DPO, CPO, SimPO, KTO: the reward scale (τ for IPO). Unused by sft."""
    nll_on_prompt: bool | None = None
    """NLL over prompt and response (True) or response tokens only (False); null: the objective's
    TRL default, True for orpo (as the paper's code) and False for the others."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """dpo and cpo: the pairwise loss, DPO's log-sigmoid, IPO's squared loss or SLiC's hinge."""
    rpo_alpha: float | None = Field(default=None, ge=0)
    """dpo: add this times the chosen NLL (RPO, Pang et al. 2024); TRL: loss_type [sigmoid, sft]."""
    cpo_alpha: float = Field(default=1.0, ge=0)
    """cpo and simpo: weight of the chosen NLL (the BC regulariser; SimPO's paper uses 0)."""
    simpo_gamma: float = 0.5
    """simpo: target reward margin γ (TRL's `simpo_gamma`)."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """kto: weight of the desirable examples' losses (λ_D in the paper)."""
    undesirable_weight: float = Field(default=1.0, gt=0)
    """kto: weight of the undesirable examples' losses (λ_U); with unequal counts, the paper
    advises λ_D·n_D / (λ_U·n_U) in [1, 4/3]."""
    reference: Literal["precomputed", "model", "lora_disabled"] = "precomputed"
    """dpo and kto: reference log-probs computed once before training and cached by content hash
    (precomputed; one model in memory), a frozen second model (model), or the policy with its
    LoRA adapters switched off (lora_disabled)."""
    reference_model: str | None = None
    """dpo and kto: the reference model, as `model` accepts; null: the starting model itself."""
    share_prompt: bool = True
    """Prompt computed once per pair (block mask, LM head on scored tokens); false: TRL's layout."""
    max_length: int = Field(default=1024, ge=2)
    """Longest prompt + response in tokens; responses are cut to fit."""
    max_prompt_length: int = Field(default=512, ge=1)
    """Longest prompt in tokens; longer prompts lose their oldest tokens (BOS is kept)."""

    per_device_batch_size: int = Field(default=4, ge=1)
    """Pairs per micro-batch on each device."""
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches per optimizer step; the loss is weighted as one big batch."""
    max_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps; when set, overrides `num_epochs`."""
    num_epochs: float = Field(default=1.0, gt=0)
    """Passes over the training pairs (rounded up to whole optimizer steps)."""
    learning_rate: float = Field(default=5e-6, gt=0)
    """Peak AdamW learning rate, reached after warmup."""
    lr_scheduler: Literal["linear", "cosine"] = "linear"
    """Decay from the peak to zero after warmup."""
    warmup_steps: int = Field(default=0, ge=0)
    """Optimizer steps of linear warmup from zero."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW decoupled weight decay (applied to matrices, not to norms or biases)."""
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this; null disables clipping."""
    seed: int = 0
    """Seeds initialisation, data order and dropout."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast dtype; "auto" is bf16 on a CUDA device that supports it and "no" elsewhere."""
    gradient_checkpointing: bool = False
    """Recompute decoder activations in the backward pass: less memory, ~1/3 more compute."""
    attention: Literal["auto", "sdpa", "eager", "flex_attention"] = "auto"
    """Attention kernel; "auto" is FlexAttention (a block mask, no per-shape host planning) on
    CUDA with `share_prompt`, and the model's own (SDPA) elsewhere."""
    bucket_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    """Pad each batch's width to a multiple of this and its packed rows to a power of two, so
    shapes repeat and GPU kernels are planned or compiled once per shape; "auto" is 128 on CUDA
    and none elsewhere (padding costs CPU time and saves nothing there)."""
    micro_batch_tokens: int | None = Field(default=None, ge=1)
    """Token-budget batching: a micro-batch holds consecutive pairs up to this many prompt +
    chosen + rejected tokens instead of `per_device_batch_size` pairs; null: a pair count."""
    compile: bool = False
    """`torch.compile` each decoder layer (fewer, fused kernels); the first steps compile."""
    return_freed_memory: bool = False
    """Have glibc hand freed tensor memory back to the OS at once, so the peak RSS stays at the
    live peak instead of growing with heap fragmentation; about 1/3 slower per step on CPU. With
    `gradient_checkpointing`, the least memory (Linux with glibc only)."""

    log_every_steps: int = Field(default=1, ge=1)
    """Optimizer steps between training metric lines (one device sync per line)."""
    eval_every_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps between evaluations; evaluation always runs before and after training."""
    num_eval_pairs: int | None = Field(default=None, ge=1)
    """Use only the first N eval pairs; null uses all of them."""
    per_device_eval_batch_size: int = Field(default=8, ge=1)
    """Pairs per evaluation batch on each device."""
    num_sample_generations: int = Field(default=2, ge=0)
    """Eval prompts answered greedily at each evaluation, saved to `samples/step-NNNNNN.jsonl`."""
    max_new_tokens: int = Field(default=64, ge=1)
    """Longest sample generation in tokens."""

    save_every_steps: int | None = Field(default=None, ge=1)
    """Optimizer steps between checkpoints; null saves none (the final model is always saved)."""
    save_total_limit: int | None = Field(default=2, ge=1)
    """Keep only the newest N complete checkpoints; null keeps all."""
    resume: Path | None = None
    """A run directory to continue from its newest complete checkpoint, with the same config."""
    force_resume: bool = False
    """Resume even when pairs, model, tokenizer or chat template changed since the run began."""

    lora: LoraConfig | None = None
    """Train LoRA adapters instead of all weights."""
    trackers: list[Tracker] = ["jsonl"]
    """Metric sinks: jsonl (always), tensorboard (<run>/tensorboard/), mlflow (<run>/mlflow.db)."""
    eval_after: EvalAfter = None
    """After training, judge the final model against the start model and score IFEval: `true`
    (the defaults), false/null (off), or an evaluation config (`orpo-pipeline eval`)."""

    @property
    def nll_includes_prompt(self) -> bool:
        """`nll_on_prompt` with the objective's default filled in."""
        return self.objective == "orpo" if self.nll_on_prompt is None else self.nll_on_prompt

    @model_validator(mode="after")
    def _reference_fits(self) -> "TrainConfig":
        if self.reference == "lora_disabled" and self.lora is None:
            msg = "reference: lora_disabled needs `lora` settings (the adapters to switch off)"
            raise ValueError(msg)
        if self.reference_model is not None and self.reference == "lora_disabled":
            msg = "reference_model cannot be used with reference: lora_disabled (the base is it)"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _kto_batches_fit(self) -> "TrainConfig":
        if self.objective != "kto":
            return self
        if self.per_device_batch_size < 2:
            msg = (
                "objective kto needs per_device_batch_size >= 2: its KL estimate pairs each "
                "prompt with the completion of another example of the micro-batch"
            )
            raise ValueError(msg)
        if self.micro_batch_tokens is not None:
            msg = "objective kto needs micro-batches of per_device_batch_size examples, not tokens"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _lengths_fit(self) -> "TrainConfig":
        if self.max_prompt_length > self.max_length:
            msg = (
                f"max_prompt_length ({self.max_prompt_length}) exceeds max_length "
                f"({self.max_length}); lower it to leave room for the response"
            )
            raise ValueError(msg)
        return self
