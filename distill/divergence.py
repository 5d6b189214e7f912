"""Divergences between the teacher's captured top-K distribution and the student's, per token position.

Small composable functions: gather the student's log-probabilities at the teacher's ids, optionally add a tail bucket
for the mass outside the top K, then compare. Nothing vocabulary-sized is built beyond the student's own logits.
"""

from __future__ import annotations

import torch

# A slot without a probability (-inf: padding, or a token a grammar forbade) is floored on both sides: a finite value
# keeps 0 * log 0 at 0 instead of nan, and equal floors make the slot add nothing to any divergence.
LOG_FLOOR = -1e4


def student_logprobs_at(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits) at `ids` ([..., V] and [..., K] -> [..., K]), in float32, without a full log-softmax copy."""
    logits = logits.float()
    return logits.gather(-1, ids) - logits.logsumexp(-1, keepdim=True)


def with_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """[..., K] -> [..., K+1]: the K log-probabilities and log(1 - their total), the mass on every other token."""
    # a tail of at least 1e-6: log(0) would be finite after a clamp but its gradient would not
    total = logprobs.logsumexp(-1, keepdim=True).clamp(max=-1e-6)
    # log(1 - exp(total)), stable for total near 0 (expm1) and far below it (log1p)
    tail = torch.where(total > -0.693, torch.log(-torch.expm1(total)), torch.log1p(-torch.exp(total)))
    return torch.cat([logprobs, tail], dim=-1)


def _renormalised(logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - logprobs.logsumexp(-1, keepdim=True)


def forward_kl(teacher_lp: torch.Tensor, student_lp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) = sum p_t (log p_t - log p_s): the student must cover every token the teacher likes."""
    return (teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1)


def reverse_kl(teacher_lp: torch.Tensor, student_lp: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher): the student may settle on one of the teacher's modes."""
    return (student_lp.exp() * (student_lp - teacher_lp)).sum(-1)


def jsd(teacher_lp: torch.Tensor, student_lp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence (as TRL's GKD): beta KL(p_t || m) + (1 - beta) KL(p_s || m),
    m = beta p_t + (1 - beta) p_s, in log space."""
    log_m = torch.logsumexp(torch.stack([teacher_lp + torch.log(torch.tensor(beta)),
                                         student_lp + torch.log(torch.tensor(1 - beta))]), dim=0)
    return beta * forward_kl(teacher_lp, log_m) + (1 - beta) * forward_kl(student_lp, log_m)


DIVERGENCES = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "jsd": jsd}


def topk_divergence(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor,
                    divergence: str = "forward_kl", tail: bool = True) -> torch.Tensor:
    """Per-position divergence between teacher and student over the teacher's top-K ids: with `tail`, plus one bucket
    for all other tokens (both sides then sum to 1 over the same K+1 outcomes); without, both renormalised over K.

    A slot whose teacher log-probability is -inf is no outcome: padding, or in a constrained capture (label mode) a
    token the grammar forbade. It is masked on both sides, so the student's mass on it falls in the tail and the
    divergence is over the tokens the teacher could produce."""
    teacher = teacher_logprobs.float()
    has_probability = teacher > LOG_FLOOR
    floor = torch.tensor(LOG_FLOOR, device=teacher.device)
    teacher = torch.where(has_probability, teacher, floor)
    student = torch.where(has_probability, student_logprobs_at(logits, teacher_ids), floor)
    if tail:
        teacher, student = with_tail(teacher), with_tail(student)
    else:
        teacher, student = _renormalised(teacher), _renormalised(student)
    return DIVERGENCES[divergence](teacher, student)


def top1_agreement(logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """Whether the student's most likely token is the teacher's, per position."""
    best = teacher_ids.gather(-1, teacher_logprobs.argmax(-1, keepdim=True)).squeeze(-1)
    return logits.argmax(-1) == best
