"""The white-box trainer: TRL's SFTTrainer with the distillation term, configured by a typed config (as TRL's
GKDConfig(SFTConfig) / GKDTrainer). Imported only by the training process: it imports TRL."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from trl import SFTConfig, SFTTrainer

from distill.divergence import top1_agreement, topk_divergence
from distill.train.kd import TEACHER_COLUMNS


@dataclass
class KDConfig(SFTConfig):
    """SFTConfig plus the distillation term of objectives kd and sft+kd (train.kd in the recipe)."""

    cross_entropy: str = field(default="everywhere", metadata={
        "help": "where_no_teacher: the teacher's distribution where it was captured, cross-entropy only elsewhere "
                "(objective kd); everywhere: cross-entropy plus kd_weight x the divergence at every token (sft+kd)."})
    divergence: str = field(default="forward_kl", metadata={"help": "Divergence from the teacher's top-K (distill.divergence)."})
    kd_weight: float = field(default=1.0, metadata={"help": "Weight of the divergence beside cross-entropy (sft+kd)."})
    kd_tail: bool = field(default=True, metadata={"help": "Count the teacher's mass outside its top-K as one more outcome."})


class KDTrainer(SFTTrainer):
    """SFTTrainer with the distillation loss: CE and the divergence per token, logged apart."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(self._signature_columns) + TEACHER_COLUMNS

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        a = self.args
        t_ids, t_lps, t_mask = inputs.pop("teacher_ids"), inputs.pop("teacher_logprobs"), inputs.pop("teacher_mask")
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        # position j's logits predict token j + 1
        logits, targets = outputs.logits[:, :-1], labels[:, 1:]
        t_ids, t_lps, t_mask = t_ids[:, 1:], t_lps[:, 1:], t_mask[:, 1:]
        learned = targets != -100
        ce = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
        div = torch.where(t_mask, topk_divergence(logits, t_ids, t_lps, a.divergence, a.kd_tail), 0.0)
        if a.cross_entropy == "where_no_teacher":  # the teacher's distribution where there is one, the label elsewhere
            ce_part, weight = torch.where(t_mask, 0.0, ce), 1.0
        else:
            ce_part, weight = ce, a.kd_weight
        per_token = ce_part + weight * div
        n = learned.sum() if num_items_in_batch is None else num_items_in_batch
        loss = (per_token * learned).sum() / torch.as_tensor(n).clamp(min=1)
        if a.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        # The two terms of the loss, over the loss's own denominator (the learned tokens), so that the logged
        # loss = ce_loss + weight x kd_loss (kd: weight 1, cross-entropy only where the teacher gave no distribution).
        # With gradient accumulation the loss weighs micro-batches by tokens and the terms average them, so the sum
        # holds up to the micro-batches' differing token counts.
        mode = "train" if model.training else "eval"
        with torch.no_grad():
            agree = top1_agreement(logits, t_ids, t_lps) & t_mask
            sums = torch.stack([(ce_part * learned).sum(), (div * learned).sum(), learned.sum(), t_mask.sum(),
                                agree.sum()]).float()
            sums = self.accelerator.gather_for_metrics(sums.unsqueeze(0)).sum(0)
        self._metrics[mode]["ce_loss"].append((sums[0] / sums[2].clamp(min=1)).item())
        self._metrics[mode]["kd_loss"].append((sums[1] / sums[2].clamp(min=1)).item())
        self._metrics[mode]["teacher_top1_agreement"].append((sums[4] / sums[3].clamp(min=1)).item())
        return (loss, outputs) if return_outputs else loss
