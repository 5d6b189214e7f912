"""On-policy distillation's per-answer losses, as small functions of log-probabilities (beside distill.divergence).

On the student's own samples, the per-token reverse KL to the teacher, log p_sampler - log p_teacher, is the negative
advantage of an importance-weighted policy gradient with discount 0 (tinker-cookbook's form): its gradient moves the
student's probability of each sampled token by how much more the teacher likes it. The forward KL over the teacher's
top K (plus a tail bucket) may be added at the same positions (GKD's). On text the student did not sample (GKD's
off-policy share, lmbda < 1) no importance ratio exists: both are divergences over the teacher's top K there.
"""

from __future__ import annotations

import torch

from distill.divergence import topk_divergence


def policy_gradient(new: torch.Tensor, old: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the surrogate summed over the answer's tokens, the per-token reverse KL it is built on).

    `new`: the learner's log-probabilities of the sampled tokens (with gradient); `old`: the sampler's, as it drew
    them; `teacher`: the teacher's of the same tokens. The ratio exp(new - old) is 1 in value when learner and sampler
    agree (step 1 of a synced policy) and corrects the gradient when they do not (sync_every > 1)."""
    reverse = old - teacher
    return -(torch.exp(new - old) * -reverse).sum(), reverse


def off_policy_divergence(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                          reverse_weight: float, forward_weight: float) -> torch.Tensor:
    """The answer's summed divergence from the teacher over its top K plus a tail bucket, on tokens the student did
    not sample: reverse_weight x reverse KL + forward_weight x forward KL, the on-policy terms' weights."""
    total = torch.zeros((), device=logits.device)
    for weight, divergence in ((reverse_weight, "reverse_kl"), (forward_weight, "forward_kl")):
        if weight:
            total = total + weight * topk_divergence(logits, teacher_ids, teacher_logprobs, divergence, True).sum()
    return total
