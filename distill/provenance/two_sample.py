"""Synthetic vs real: does what the teacher wrote look like what the real data holds at the same place?

What is compared depends on the mode:
- complete and label: the teacher's answers (the completions of kept rows) against the real
  references of the seed pool the teacher was given; the inputs are real seeds in these modes,
  so comparing them would only compare real with real.
- synthesize: the inputs the teacher wrote (kept rows' `input`) against the seed pool's inputs.
The seed pool, not the held-out split: with data.heldout.min_per_slice the split over-represents
rare slices, and a comparison with it would blame the teacher for the mix the split made. Runs
that recorded no seed pool are compared with the held-out split.

Two tests, by the kind of text:
- categorical (labels, or short answers with few distinct values): total variation distance
  between the two value distributions, with a permutation p-value; the per-value shares are
  reported. An embedding test would blur labels whose names are close in meaning.
- free text: both sides embedded with the offline MiniLM model; MMD (RBF kernel, median
  bandwidth) with a permutation p-value says whether there is any difference, the
  cross-validated AUC of a logistic regression says how big (0.5: indistinguishable, 1.0:
  every text gives its origin away).
A difference that is significant and large (TV >= warn_tv, or AUC >= warn_auc) is a warning:
the student learns from a distribution that is not the real task's.
"""

from __future__ import annotations

import random

import numpy as np

from distill import rows as C
from distill.recipe import SyntheticVsRealSettings

MIN_ROWS = 10  # below this per side neither test means much


def _sample(texts: list[str], k: int, seed: int) -> list[str]:
    """At most k texts, a reproducible sample. Repeats are kept: a teacher that writes one text
    over and over differs from real data, and dropping repeats would hide it."""
    texts = [t for t in texts if t]
    return texts if len(texts) <= k else random.Random(seed).sample(texts, k)


# --------------------------------------------------------------------------- which texts


def _reference(row: dict) -> str | None:
    if row.get(C.REFERENCE) is not None:
        return str(row[C.REFERENCE])
    refs = row.get(C.REFERENCES) or []
    return str(refs[0]) if refs else None


def texts_to_compare(mode: str, rows: list[dict], real_rows: list[dict], where: str = "the held-out real split") -> dict:
    """The two sides and what they are: {synthetic, real, synthetic_texts, real_texts}, or {skipped} with why.
    `real_rows` are real items (input, reference) and `where` names them."""
    kept = [r for r in rows if r.get(C.KEPT)]
    of = "held-out split" if "held-out" in where else "seed pool"
    if mode == "synthesize":
        # What the student is prompted with: the input the teacher wrote (the completion in rows that carry none).
        synthetic = [str(r[C.INPUT] if r.get(C.INPUT) is not None else r.get(C.COMPLETION) or "").strip() for r in kept]
        real = [str(r[C.INPUT]).strip() for r in real_rows]
        return {"synthetic": synthetic, "real": real, "synthetic_texts": "inputs the teacher wrote in the kept rows",
                "real_texts": f"inputs of {where}"}
    if mode == "score":
        return {"synthetic_texts": "real targets of the kept rows", "real_texts": f"references of {where}",
                "skipped": "score mode: the kept rows' completions are the data's own targets, not text the teacher "
                           "wrote, so there is no synthetic side to compare"}
    what = "labels" if mode == "label" else "answers"
    named = {"synthetic_texts": f"teacher {what} of the kept rows", "real_texts": f"reference {what} of {where}"}
    real = [ref.strip() for ref in map(_reference, real_rows) if ref is not None]
    if not real:
        return {**named, "skipped": f"the {of} has no references (data.target_field gives none), so the "
                                    f"teacher's {what} have nothing real to be compared with"}
    return {**named, "synthetic": [str(r.get(C.COMPLETION) or "").strip() for r in kept], "real": real}


def categorical_reason(mode: str, choices: list[str] | None, real: list[str], settings: SyntheticVsRealSettings) -> str | None:
    """Why the texts are categories (then the categorical test runs), or None for free text."""
    if mode == "label" and choices:
        return f"label mode with a fixed set of {len(choices)} labels"
    if mode == "synthesize":
        return None
    distinct = len(set(real))
    # Few values that repeat: answers such as labels or numbers, where near-synonyms in embedding space are wrong answers.
    if real and distinct <= settings.categorical_max_values and distinct <= len(real) / 2:
        return (f"the {len(real)} references take only {distinct} distinct values "
                f"(at most {settings.categorical_max_values}, each seen twice on average or more)")
    return None


# --------------------------------------------------------------------------- categorical test


def tv_permutation_test(x: np.ndarray, y: np.ndarray, k: int, permutations: int, seed: int) -> tuple[float, float]:
    """Total variation distance between the value distributions of x and y (codes 0..k-1) and its permutation p-value."""
    n, m = len(x), len(y)
    pooled = np.concatenate([x, y])
    total = np.bincount(pooled, minlength=k)
    observed = 0.5 * float(np.abs(np.bincount(x, minlength=k) / n - np.bincount(y, minlength=k) / m).sum())
    rng = np.random.default_rng(seed)
    firsts = np.stack([rng.permutation(pooled)[:n] for _ in range(permutations)])
    counts_x = np.bincount((firsts + k * np.arange(permutations)[:, None]).ravel(), minlength=k * permutations)
    counts_x = counts_x.reshape(permutations, k)
    null = 0.5 * np.abs(counts_x / n - (total - counts_x) / m).sum(axis=1)
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return observed, p_value


def compare_categories(synthetic: list[str], real: list[str], settings: SyntheticVsRealSettings, seed: int = 0,
                       categories: list[str] | None = None) -> dict:
    values = list(categories or [])
    values += sorted(set(synthetic + real) - set(values))
    code = {v: i for i, v in enumerate(values)}
    x = np.array([code[t] for t in synthetic])
    y = np.array([code[t] for t in real])
    tv, p_value = tv_permutation_test(x, y, len(values), settings.permutations, seed)
    cx, cy = np.bincount(x, minlength=len(values)), np.bincount(y, minlength=len(values))
    shares = [{"value": v, "synthetic": float(cx[i] / len(x)), "real": float(cy[i] / len(y))} for i, v in enumerate(values)]
    shares.sort(key=lambda s: -(s["synthetic"] + s["real"]))
    flagged = p_value < settings.alpha and tv >= settings.warn_tv
    return {"test": "categorical", "n_synthetic": len(x), "n_real": len(y), "tv_distance": tv, "p_value": p_value,
            "shares": shares, "alpha": settings.alpha, "warn_tv": settings.warn_tv, "flagged": bool(flagged)}


# --------------------------------------------------------------------------- embedding test


def mmd_permutation_test(x: np.ndarray, y: np.ndarray, permutations: int, seed: int) -> tuple[float, float]:
    """Biased MMD^2 between x and y and its permutation p-value (the kernel matrix is computed once)."""
    z = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    bandwidth = np.median(d2[np.triu_indices_from(d2, k=1)]) or 1.0
    kernel = np.exp(-d2 / bandwidth)
    n, m = len(x), len(y)

    def mmd2(labels: np.ndarray) -> np.ndarray:  # labels: (n + m, P) of 1 for the x side, 0 for y
        a = labels / n
        b = (1 - labels) / m
        diff = a - b
        return np.einsum("ip,ip->p", diff, kernel @ diff)

    observed = float(mmd2(np.r_[np.ones(n), np.zeros(m)][:, None])[0])
    rng = np.random.default_rng(seed)
    base = np.r_[np.ones(n), np.zeros(m)]
    null = np.concatenate([mmd2(np.stack([rng.permutation(base) for _ in range(min(100, permutations - done))], axis=1))
                           for done in range(0, permutations, 100)])
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + permutations)
    return observed, p_value


def classifier_auc(x: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Cross-validated ROC AUC of a logistic regression separating x from y (each text scored out of fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    z = np.concatenate([x, y])
    labels = np.r_[np.ones(len(x)), np.zeros(len(y))]
    folds = StratifiedKFold(n_splits=min(5, len(x), len(y)), shuffle=True, random_state=seed)
    scores = cross_val_predict(LogisticRegression(max_iter=2000), z, labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores))


def compare_embeddings(x: np.ndarray, y: np.ndarray, settings: SyntheticVsRealSettings, seed: int = 0) -> dict:
    mmd2, p_value = mmd_permutation_test(x, y, settings.permutations, seed)
    auc = classifier_auc(x, y, seed)
    flagged = p_value < settings.alpha and auc >= settings.warn_auc
    return {"test": "embedding", "n_synthetic": len(x), "n_real": len(y), "mmd2": mmd2, "p_value": p_value, "auc": auc,
            "alpha": settings.alpha, "warn_auc": settings.warn_auc, "flagged": bool(flagged)}


# --------------------------------------------------------------------------- the check


def synthetic_vs_real(synthetic: list[str], real: list[str], settings: SyntheticVsRealSettings, seed: int = 0,
                      categorical: str | None = None, categories: list[str] | None = None) -> dict:
    """Compare two lists of texts (at most settings.max_rows each). `categorical`: why they are categories, which
    runs the categorical test; None embeds them. `categories`: the label set, listed even where a value never occurs."""
    synthetic, real = _sample(synthetic, settings.max_rows, seed), _sample(real, settings.max_rows, seed)
    if len(synthetic) < MIN_ROWS or len(real) < MIN_ROWS:
        return {"n_synthetic": len(synthetic), "n_real": len(real),
                "skipped": f"fewer than {MIN_ROWS} non-empty texts on a side ({len(synthetic)} synthetic, {len(real)} real)",
                "flagged": False}
    distinct = {"distinct_synthetic": len(set(synthetic)), "distinct_real": len(set(real))}
    if categorical:
        return {**compare_categories(synthetic, real, settings, seed, categories), **distinct, "why_test": categorical}
    from distill.models.embeddings import DEFAULT_EMBEDDER, embed

    result = compare_embeddings(embed(synthetic), embed(real), settings, seed)
    return {**result, **distinct, "embedder": DEFAULT_EMBEDDER, "why_test": "free text"}


def check_synthetic_vs_real(mode: str, choices: list[str] | None, rows: list[dict], real_rows: list[dict],
                            settings: SyntheticVsRealSettings, seed: int = 0, where: str = "the held-out real split") -> dict:
    """The document stage's check: pick the texts for the mode, then the test for the texts."""
    sides = texts_to_compare(mode, rows, real_rows, where)
    named = {"mode": mode, **{k: sides[k] for k in ("synthetic_texts", "real_texts") if k in sides}}
    if "skipped" in sides:
        return {**named, "skipped": sides["skipped"], "flagged": False}
    why = categorical_reason(mode, choices, [t for t in sides["real"] if t], settings)
    return {**named, **synthetic_vs_real(sides["synthetic"], sides["real"], settings, seed, why,
                                         choices if mode == "label" else None)}


def gap_text(result: dict) -> str:
    """One line on a flagged result, for the console and the cards' warnings."""
    what = f"{result.get('synthetic_texts', 'synthetic texts')} against {result.get('real_texts', 'real texts')}"
    if result.get("test") == "categorical":
        top = max(result["shares"], key=lambda s: abs(s["synthetic"] - s["real"]))
        return (f"synthetic vs real: {what}: total variation distance {result['tv_distance']:.2f} between the value "
                f"distributions (permutation p = {result['p_value']:.4f}); largest gap {top['value']!r} "
                f"{100 * top['synthetic']:.1f}% against {100 * top['real']:.1f}%")
    return (f"synthetic vs real: {what}: a classifier tells them apart with AUC {result['auc']:.2f} "
            f"(MMD permutation p = {result['p_value']:.4f})")
