"""The distillation divergences, checked against full-vocabulary computations and for what they teach."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distill.divergence import DIVERGENCES, top1_agreement, topk_divergence, with_tail

V, K = 12, 4


def _teacher(logits: torch.Tensor, k: int):
    """The teacher's capture from its full logits: top-k ids and their log-probabilities."""
    top = logits.log_softmax(-1).topk(k)
    return top.indices, top.values


def test_on_the_whole_vocabulary_the_divergences_are_the_textbook_ones():
    torch.manual_seed(0)
    t_logits, s_logits = torch.randn(3, V), torch.randn(3, V)
    ids, lps = _teacher(t_logits, V)
    p, q = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
    assert torch.allclose(topk_divergence(s_logits, ids, lps, "forward_kl", tail=False),
                          F.kl_div(q, p, log_target=True, reduction="none").sum(-1), atol=1e-5)
    assert torch.allclose(topk_divergence(s_logits, ids, lps, "reverse_kl", tail=False),
                          F.kl_div(p, q, log_target=True, reduction="none").sum(-1), atol=1e-5)
    m = (p.exp() + q.exp()) / 2
    expected_jsd = 0.5 * (p.exp() * (p - m.log())).sum(-1) + 0.5 * (q.exp() * (q - m.log())).sum(-1)
    assert torch.allclose(topk_divergence(s_logits, ids, lps, "jsd", tail=False), expected_jsd, atol=1e-5)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_with_a_tail_bucket_they_compare_the_top_k_and_everything_else(name):
    torch.manual_seed(1)
    t_logits, s_logits = torch.randn(5, V) * 2, torch.randn(5, V)
    ids, lps = _teacher(t_logits, K)

    def coarse(logits):  # each of the teacher's K ids, then one bucket for the other tokens
        probs = logits.softmax(-1)
        top = probs.gather(-1, ids)
        return torch.cat([top, 1 - top.sum(-1, keepdim=True)], -1).log()

    expected = DIVERGENCES[name](coarse(t_logits), coarse(s_logits))
    assert torch.allclose(topk_divergence(s_logits, ids, lps, name, tail=True), expected, atol=1e-5)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_a_student_equal_to_its_teacher_has_nothing_left_to_learn(name):
    torch.manual_seed(2)
    logits = torch.randn(4, V)
    ids, lps = _teacher(logits, K)
    assert topk_divergence(logits, ids, lps, name).abs().max() < 1e-5
    assert (topk_divergence(torch.randn(4, V), ids, lps, name) > 1e-3).all()


def test_jsd_is_symmetric_and_bounded_by_log_2():
    torch.manual_seed(3)
    a, b = torch.randn(6, V).log_softmax(-1), torch.randn(6, V).log_softmax(-1)
    assert torch.allclose(DIVERGENCES["jsd"](a, b), DIVERGENCES["jsd"](b, a), atol=1e-6)
    assert (DIVERGENCES["jsd"](a, b) < math.log(2)).all()


def test_padding_positions_give_finite_values_and_gradients():
    logits = torch.randn(2, 3, V, requires_grad=True)
    ids = torch.zeros(2, 3, K, dtype=torch.long)
    lps = torch.full((2, 3, K), float("-inf"))
    mask = torch.tensor([[True, False, False], [False, False, False]])
    lps[0, 0] = torch.tensor([-0.1, -2.5, -3.0, -4.0])
    ids[0, 0] = torch.tensor([1, 2, 3, 4])
    for name in DIVERGENCES:
        div = topk_divergence(logits, ids, lps, name)
        assert torch.isfinite(div).all()
        (torch.where(mask, div, 0.0).sum()).backward()
        assert torch.isfinite(logits.grad).all()
        logits.grad = None


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("tail", [True, False])
def test_a_constrained_capture_gives_the_divergence_over_the_tokens_the_grammar_allowed(name, tail):
    """Label mode: the grammar masks the teacher's logits before vLLM reads them, so only 2 of the captured top 4
    have a probability and the others are -inf. The divergence is the one over the allowed tokens (and, with a
    tail, one bucket for every other token), not a -inf clamped to a large negative number."""
    torch.manual_seed(4)
    s_logits = torch.randn(3, V)
    allowed = torch.tensor([5, 9])
    t_logits = torch.full((3, V), float("-inf"))
    t_logits[:, allowed] = torch.randn(3, 2)
    t_lps = t_logits.log_softmax(-1)
    ids = torch.tensor([[5, 9, 0, 1]] * 3)  # vLLM fills the top K with forbidden tokens at -inf
    lps = torch.cat([t_lps[:, allowed], torch.full((3, 2), float("-inf"))], -1)

    s_lps = s_logits.log_softmax(-1)
    student = s_lps[:, allowed]
    teacher = t_lps[:, allowed]
    if tail:
        student = torch.cat([student, torch.log1p(-student.exp().sum(-1, keepdim=True))], -1)
        teacher = torch.cat([teacher, torch.full((3, 1), math.log(1e-6))], -1)  # the floor of an empty tail
    else:
        student = student - student.logsumexp(-1, keepdim=True)
    expected = DIVERGENCES[name](teacher, student)
    got = topk_divergence(s_logits, ids, lps, name, tail=tail)
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    assert got.max() < 20  # a -inf clamped to -1e4 on the teacher side alone gives hundreds


def test_a_student_that_already_holds_all_the_mass_in_the_top_k_still_has_finite_gradients():
    logits = torch.full((1, V), -60.0)
    logits[0, :K] = torch.tensor([30.0, 29.0, 28.0, 27.0])
    logits.requires_grad_(True)
    ids, lps = _teacher(logits.detach(), K)
    topk_divergence(logits, ids, lps).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.isfinite(with_tail(lps)).all()


def test_minimising_forward_kl_moves_the_student_to_the_teachers_choice():
    torch.manual_seed(4)
    teacher = torch.randn(8, V) * 3
    ids, lps = _teacher(teacher, K)
    student = torch.zeros(8, V, requires_grad=True)
    optimizer = torch.optim.Adam([student], lr=0.1)
    first = topk_divergence(student, ids, lps).mean().item()
    for _ in range(200):
        optimizer.zero_grad()
        topk_divergence(student, ids, lps).mean().backward()
        optimizer.step()
    assert topk_divergence(student, ids, lps).mean().item() < 0.05 * first
    assert top1_agreement(student, ids, lps).all()


def test_bf16_logits_give_the_float32_result():
    torch.manual_seed(5)
    logits = torch.randn(4, V)
    ids, lps = _teacher(torch.randn(4, V) * 2, K)
    assert torch.allclose(topk_divergence(logits.bfloat16(), ids, lps), topk_divergence(logits, ids, lps), atol=2e-2)
