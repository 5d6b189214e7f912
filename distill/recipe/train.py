"""train: the student's format, the objective (sft, kd, on-policy) and its settings, LoRA and the optimizer."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from distill import catalog
from distill.recipe.base import Section, recipe_relative, resolve_existing
from distill.recipe.data import DataSource


class RepairSettings(DataSource):
    """On-policy repair: part of each step's prompts are like a guard set's, and an earlier model (the base student by
    default) scores the student's answers to them, so that the student keeps, or gets back, what task training
    broke. The prompts are never an evaluation set's items: those stay held out. Their source (path or hub) is read
    as any data is; rows whose input is an evaluation set's item are left out and counted."""

    limit: int | None = Field(None, gt=0, description="Read at most this many rows of the file.")
    prompt_template: str = Field(
        "{{ input }}", description="The prompt the student and the repair teacher both get for a row (Jinja2, sandboxed; "
        "`input` and `row`): a guard set's prompt_template gives prompts like its items.")
    teacher: str = Field(
        "base", description="Who scores the repair prompts: base, the student's base model without an adapter; or an "
        "adapter folder or run directory (its train/adapter) of this student, merged into the base for scoring.")
    share: float = Field(0.5, gt=0, le=1, description="Share of each on-policy step's prompts taken from the repair "
                         "prompts (rounded, at least one); the rest are the seeds, scored by the recipe's teacher.")
    guard_sets: list[str] = Field(
        default_factory=list, description="The guard sets these repair prompts are like, beside any read from `path` "
        "itself (found by content), e.g. one drawn from another file of the same task. They are marked repaired in "
        "the report and cards: training toward them means they no longer measure general ability.")

    @field_validator("teacher")
    @classmethod
    def _repair_teacher(cls, v: str, info: ValidationInfo) -> str:
        return v if v == "base" else _adapter_folder(v, info)


def _adapter_folder(value: str, info: ValidationInfo) -> str:
    """An adapter folder, or a run directory's train/adapter, resolved relative to the recipe."""
    folder = Path(resolve_existing(value, info, folder=True))
    adapter = next((f for f in (folder, folder / "train" / "adapter") if (f / "adapter_config.json").is_file()), None)
    if adapter is None:
        raise ValueError(f"{folder} is neither an adapter folder nor a run directory with train/adapter/")
    return str(adapter)


class OnPolicySettings(Section):
    """objective on_policy: the student answers the seed prompts itself (vLLM, its current LoRA adapter), the teacher
    scores exactly those tokens on its own prompt for the same seed (vLLM prompt log-probabilities, teacher-forced),
    and the student learns from the per-token difference. Seeds only: no labels needed. The teacher scores where it
    writes: in this process, through generate.endpoint (backend openai), or through the run's slurm.teacher_server
    job; a server is checked before any work (prefix caching off, as its /metrics says; top_k log-probabilities
    allowed)."""

    steps: int = Field(20, gt=0, description="Optimizer steps.")
    prompts_per_step: int = Field(16, gt=0, description="Seed prompts per step, taken in an order drawn with "
                                  "train.seed (not the file's) and cycling.")
    samples_per_prompt: int = Field(1, ge=1, description="Student answers sampled per prompt.")
    max_tokens: int = Field(16, gt=0, description="Most tokens per student answer.")
    temperature: float = Field(1.0, gt=0, description="The student's sampling temperature (1: its own distribution). "
                               "Other values train the tempered student toward the teacher: the learner reads its "
                               "log-probabilities at the same temperature as the sampler.")
    reverse_kl_weight: float = Field(
        1.0, ge=0, description="Weight of the per-token reverse KL on the sampled tokens, log p_student - log "
        "p_teacher, used as the advantage of an importance-weighted policy gradient with discount 0 (the form of "
        "tinker-cookbook's on-policy distillation).")
    forward_kl_weight: float = Field(
        0.0, ge=0, description="Weight of the forward KL over the teacher's top-K (plus a tail bucket) at each of the "
        "student's tokens (the GKD form).")
    top_k: int = Field(1, ge=1, description="Teacher log-probabilities kept per position: 1 suffices for the "
                       "reverse KL; the forward KL uses them all (20 or so).")
    lmbda: float = Field(1.0, ge=0, le=1, description="Share of steps that are on-policy (GKD's lmbda): the others "
                         "train on the kept rows' text (cross-entropy), drawn per step with train.seed.")
    sync_every: int = Field(1, ge=1, description="Load the new adapter into the sampling engine every this many "
                            "optimizer steps (1: every sample comes from the current policy).")
    start_from: str = Field(
        "base", description="base: a fresh adapter on the base student; sft: first train the recipe's SFT on the "
        "kept rows, then continue on-policy from that adapter; or an adapter folder or run directory (its "
        "train/adapter), relative to the recipe.")

    repair: RepairSettings | None = Field(
        None, description="Repair: part of each step's prompts from a file of prompts like a guard set's, scored by an "
        "earlier model (the base student by default) instead of the teacher.")

    @field_validator("start_from")
    @classmethod
    def _start_folder(cls, v: str, info: ValidationInfo) -> str:
        return v if v in ("base", "sft") else _adapter_folder(v, info)


class KDSettings(Section):
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="forward_kl: KL(teacher || student), covers the teacher's modes. reverse_kl: "
        "KL(student || teacher), seeks one. jsd: generalized Jensen-Shannon at beta 0.5."
    )
    weight: float = Field(1.0, ge=0, description="sft+kd: weight of the divergence beside the cross-entropy. Both are "
                          "logged per learned token (ce_loss, kd_loss), so their scales can be compared and the logged "
                          "loss is ce_loss + weight x kd_loss.")
    top_k: int | None = Field(None, gt=0, description="Use the teacher's K most likely tokens, at most "
                              "generate.logprobs (default: all captured).")
    tail: bool = Field(True, description="Add one bucket for the probability outside the top K, so teacher and "
                       "student distributions are over the same outcomes; false renormalises both over the top K.")
    max_mismatch_share: float = Field(
        0.05, ge=0, le=1, description="Most training rows (a share) that have no capture, or whose kept text is not "
        "the teacher's captured tokens (a filter step that rewrote it), before training is refused. Such rows are left "
        "out of training and counted in the train summary. Rows the student's tokenizer would split otherwise are "
        "trained on the teacher's tokens and only counted (rows_the_student_would_tokenize_otherwise)."
    )


ALL_LINEAR = "all-linear"  # PEFT's word for every linear layer but the output head


class LoraSettings(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="Module names that get adapters, or "
        "[all-linear]: every linear layer of the model but its output head (attention and MLP alike)."
    )

    @field_validator("target_modules")
    @classmethod
    def _all_linear_alone(cls, v: list[str]) -> list[str]:
        if ALL_LINEAR in v and len(v) > 1:
            raise ValueError(f"{ALL_LINEAR} already names every linear layer: give it alone, or list module names")
        return v

    @property
    def peft_target_modules(self) -> str | list[str]:
        """As PEFT takes them: `all-linear` only as the string (in a list it is looked for as a module's name)."""
        return ALL_LINEAR if self.target_modules == [ALL_LINEAR] else list(self.target_modules)


# The SFTConfig settings distill sets itself, each with the recipe key (or the reason) that decides it: the
# train.trainer_args pass-through refuses them, so that one setting never has two places that disagree.
TRAINER_ARGS_SET_BY_DISTILL: dict[str, str] = {
    "output_dir": "the run's train/checkpoints folder",
    "num_train_epochs": "train.epochs", "per_device_train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps", "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler", "warmup_steps": "train.warmup_steps",
    "weight_decay": "train.weight_decay", "max_grad_norm": "train.max_grad_norm", "max_length": "train.max_length",
    "logging_steps": "train.logging_steps", "save_strategy": "train.save_steps", "save_steps": "train.save_steps",
    "seed": "train.seed", "data_seed": "train.seed", "report_to": "train.report_to",
    "gradient_checkpointing": "train.gradient_checkpointing", "packing": "train.packing",
    "packing_strategy": "train.packing (best-fit packing that keeps each example's boundaries)",
    "padding_free": "train.packing", "bf16": "models.student.dtype", "use_cpu": "the machine (a GPU when there is one)",
    "completion_only_loss": "distill (the loss is on the completion only)",
    "disable_tqdm": "distill (its own progress bar)", "dataloader_num_workers": "distill (rows are tokenized up front)",
    "cross_entropy": "train.objective", "divergence": "train.kd.divergence", "kd_weight": "train.kd.weight",
    "kd_tail": "train.kd.tail",
    # The student's format: evaluation prompts it the same way, so training must not change it behind distill's back.
    **{k: "the student's format (train.prompt_template, completion_template, chat)" for k in (
        "dataset_text_field", "dataset_kwargs", "assistant_only_loss", "eos_token", "pad_token", "chat_template_path",
        "truncation_mode", "eval_packing")},
    "model_init_kwargs": "models.student and train.method (distill loads the student itself)",
    "trust_remote_code": "models.student.trust_remote_code",
    **{k: "`distill export --push-to-hub` (the student with its card, after evaluation)" for k in (
        "push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push",
        "hub_revision")},
}


def trainer_config_types() -> dict:
    """TRL's SFTConfig fields and their types (imported only when train.trainer_args is set: the import takes
    seconds)."""
    import typing

    from trl import SFTConfig

    return typing.get_type_hints(SFTConfig)


def check_trainer_arg(key: str, value: Any, types: dict) -> None:
    """One train.trainer_args entry: a field of SFTConfig that distill does not set, holding a value of its type (as
    given: no text read as a number), and plain data (it is fingerprinted and recorded as JSON)."""
    from pydantic import TypeAdapter
    from pydantic import ValidationError as Invalid

    if key in TRAINER_ARGS_SET_BY_DISTILL:
        raise ValueError(f"{key} is set by {TRAINER_ARGS_SET_BY_DISTILL[key]}, not here")
    if key not in types:
        near = difflib.get_close_matches(key, list(types), n=3, cutoff=0.6)
        raise ValueError(f"{key} is not a setting of TRL's SFTConfig" + (f" (did you mean {', '.join(near)}?)" if near else ""))
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: {value!r} is not plain data (text, number, true/false, list, mapping)") from None
    kind = types[key]
    try:
        TypeAdapter(kind).validate_python(value, strict=True)
    except Invalid as e:
        name = getattr(kind, "__name__", None) or str(kind).replace("typing.", "")
        raise ValueError(f"{key}: {value!r} is not what SFTConfig takes ({name}): {e.errors()[0]['msg']}") from None


class TrainSettings(Section):
    prompt_template: str = Field(description="Jinja template of the student prompt. Variables: input, row.")
    completion_template: str = Field(
        " {{ completion }}", description="Jinja template of the training target. Variables: completion, row."
    )
    chat: bool = Field(False, description="Train in the student's chat format: the prompt a user turn through its chat "
                       "template, the answer the assistant turn, ending with the template's end-of-turn token (must match "
                       "evaluation). With kd / sft+kd the teacher's captured tokens are the assistant turn and its stop is "
                       "read as the end-of-turn token; with on_policy the student samples in this format, stops with "
                       "that token, and the teacher's probability of stopping there is read as its own.")
    system_prompt: str | None = Field(None, description="System message of the student's chat prompt (train.chat), in "
                                      "training and evaluation alike, for rows whose conversation has none of its own.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter settings (method lora and qlora).")
    epochs: float = Field(1.0, gt=0, description="Passes over the kept rows.")
    batch_size: int = Field(16, gt=0, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Steps accumulated per optimizer update.")
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule."
    )
    warmup_steps: float = Field(0, ge=0, description="Warm-up: a whole number of steps, or a share of all steps if below 1.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay (TRL's default, 0).")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient to this norm before each optimizer step "
                                 "(TRL's default, 1; 0: no clipping).")
    max_length: int = Field(
        128, gt=0, description="Longest training sequence in tokens; longer rows are cut and lose their EOS label "
        "(counted before training, see max_truncated_share)."
    )
    max_truncated_share: float = Field(
        0.01, ge=0, le=1, description="Most rows (a share of the training rows) that may lose their EOS label to "
        "max_length before training is refused; each such row teaches the student to run on instead of stopping. "
        "The count is in the train summary (format_check)."
    )
    seed: int = Field(0, description="Training seed.")
    max_rows: int | None = Field(
        None, gt=0, description="Train on at most this many of the kept rows, a reproducible sample (train.seed) in "
        "file order, as transformers' max_train_samples: for learning curves. The adapter records which rows."
    )
    objective: Literal[tuple(catalog.OBJECTIVES)] = Field(  # type: ignore[valid-type]
        "sft", description="sft: cross-entropy on the teacher's text. kd: the teacher's captured token distributions "
        "(generate.logprobs) at every completion token, cross-entropy only where the teacher gave none (the EOS "
        "label after a stop string). sft+kd: both, the divergence weighted by kd.weight. on_policy: the student "
        "samples, the teacher scores its tokens (train.on_policy). All but sft need teacher and student to share a "
        "vocabulary."
    )
    on_policy: OnPolicySettings = Field(default_factory=lambda: OnPolicySettings(), description="objective on_policy.")
    kd: KDSettings = Field(default_factory=lambda: KDSettings(), description="The distillation term of objective kd / sft+kd.")
    logging_steps: int = Field(1, gt=0, description="Log the loss every this many steps.")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        [], description="Experiment trackers for the training curves and the evaluate / compare figures (per set, "
        "metric and slice, with intervals), in one tracker run per run directory, offline under RUN/tracking/ by "
        "default: `tensorboard --logdir RUN/tracking/tensorboard`; W&B: `wandb sync` the offline run, or set "
        "WANDB_MODE=online. Changes no output: a finished stage is not redone for it (use --force to log one)."
    )
    save_steps: int | None = Field(None, gt=0, description="Also save a checkpoint every this many steps.")
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora: a LoRA adapter (train.lora) on the student in its training dtype. qlora: the same "
        "adapter on the student loaded in 4 bits (bitsandbytes NF4, double quantization; a CUDA GPU only), for a "
        "student whose weights do not fit otherwise. full: every weight is trained, no adapter: train/adapter then "
        "holds a whole model folder (its optimizer states cost about twice the weights again)."
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass instead of keeping them: far less memory "
        "for long sequences, about a third more compute per step. The same weights either way, up to float rounding. "
        "On by default, as in TRL's SFTConfig."
    )
    packing: bool = Field(
        False, description="Pack several rows into each train.max_length sequence (TRL's best-fit packing, padding-"
        "free): no compute spent on padding. Each row keeps its own positions and attends only to itself, and the "
        "EOS check reads every row of every pack. objective sft only."
    )
    trainer_args: dict[str, Any] = Field(
        {}, description="Other settings of TRL's SFTConfig, passed through as given (optim, adam_beta2, max_steps, "
        "lr_scheduler_kwargs, ...). Each key is checked against SFTConfig's fields; the settings distill sets from "
        "its own keys are refused, naming that key."
    )
    init_adapter: str | None = Field(
        None, description="Continue training this adapter (a folder, or a run directory's train/adapter, relative to "
        "the recipe) instead of a fresh one, with its own LoRA settings: objectives sft, kd and sft+kd (on_policy "
        "has on_policy.start_from). A loop round sets it to the adapter of the round before.")
    add_rows: list[str] = Field(
        default_factory=list, description="Rows files of other runs (a run directory's filter/rows.parquet, or the "
        "run directory, relative to the recipe) whose kept rows are trained on with this run's own, before them: "
        "objective sft only (kd reads the teacher's captures of this run, on_policy samples its own). The adapter's "
        "training_data.json names each file and its sha256, so the leak check reads them. A loop round with "
        "loop.train: retrain sets it to the rounds before.")
    license: str | None = Field(
        None, description="The license of the trained student for its model card (a Hub license id: apache-2.0, "
        "llama3.1, other, ...), used only when the student base model's own files state none; the card says "
        "`unknown` when neither does."
    )

    @field_validator("method")
    @classmethod
    def _method_fits_objective(cls, v: str, info: ValidationInfo) -> str:
        objective = info.data.get("objective")
        if v != "lora" and objective == "on_policy":
            raise ValueError(f"{v} with objective on_policy: its loop samples through vLLM with the current LoRA "
                             "adapter and loads the student in its training dtype; use method lora")
        return v

    @field_validator("packing")
    @classmethod
    def _packing_for_sft(cls, v: bool, info: ValidationInfo) -> bool:
        objective = info.data.get("objective")
        if v and objective != "sft":
            raise ValueError(f"true with objective {objective}: packing is for sft only (the teacher's per-token "
                             "targets and the on-policy loop read one row per sequence)")
        return v

    @field_validator("init_adapter")
    @classmethod
    def _init_adapter_folder(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        if info.data.get("objective") == "on_policy":
            raise ValueError("objective on_policy starts from train.on_policy.start_from: set that instead")
        if info.data.get("method") == "full":
            raise ValueError("method full trains every weight, with no adapter to continue")
        return _adapter_folder(v, info)

    @field_validator("add_rows")
    @classmethod
    def _rows_files(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if v and info.data.get("objective") != "sft":
            raise ValueError(f"rows of other runs are trained on with objective sft only, not "
                             f"{info.data.get('objective')}: kd reads the teacher's captures of this run's own rows, "
                             "on_policy samples the student")
        files = []
        for value in v:
            path = recipe_relative(value, info)
            path = path / "filter" / "rows.parquet" if path.is_dir() else path
            if not path.is_file():
                raise ValueError(f"{value}: no rows file here (a run directory with filter/rows.parquet, or the file)")
            files.append(str(path))
        return files

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v:
            types = trainer_config_types()
            for key, value in v.items():
                check_trainer_arg(key, value, types)
        return v

    @property
    def trains_adapter(self) -> bool:
        """An adapter on a frozen base (lora, qlora), not every weight (full)."""
        return self.method != "full"

    @property
    def runs_the_teacher(self) -> bool:
        """Training itself asks the teacher (on_policy): the train stage then counts the teacher among its models."""
        return catalog.objective(self.objective).runs_the_teacher

    @property
    def learns_from_captures(self) -> bool:
        """The objective learns the teacher's token distributions (captured by generation), not only its text."""
        return catalog.objective(self.objective).learns_from_captures

    def uses(self, section: str) -> bool:
        """Whether the objective reads that section of train (kd, on_policy)."""
        return section in catalog.objective(self.objective).sections

    @property
    def shares_vocabulary(self) -> bool:
        """Teacher and student ids must mean the same tokens (every objective that reads the teacher's ids)."""
        return catalog.objective(self.objective).shares_vocabulary
