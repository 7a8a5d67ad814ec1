"""The statistics behind every comparison the report makes: bootstrap intervals of a mean, paired tests of two
models on the same examples (exact McNemar for pass/fail scores, Wilcoxon signed-rank otherwise), unbiased pass@k,
and the preference figures (which answer a model finds likelier, DPO's implicit reward margin)."""

from __future__ import annotations

import math

import numpy as np


def bootstrap_ci(scores: list[float], samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap confidence interval of the mean score."""
    values = np.asarray(scores, dtype=float)
    means = np.random.default_rng(seed).choice(values, size=(samples, len(values))).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def pass_at_k(correct: int, n: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` pass (Chen et al., 2021).

    >>> pass_at_k(1, 4, 1), pass_at_k(1, 4, 4), pass_at_k(0, 4, 2)
    (0.25, 1.0, 0.0)
    """
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def sampled_change(before: list[float], after: list[float], seed: int = 0) -> dict:
    """The change in sampled accuracy between two models on the same prompts: the mean, its 95% paired bootstrap
    interval and a Wilcoxon signed-rank p-value.

    >>> sampled_change([0.5, 0.25, 1.0, 0.75], [0.75, 0.5, 1.0, 1.0])["value"]
    0.1875
    """
    from scipy import stats

    changes = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    p_value = float(stats.wilcoxon(changes[changes != 0]).pvalue) if np.count_nonzero(changes) else 1.0
    return {"value": float(changes.mean()), "ci95": list(bootstrap_ci(changes, seed=seed)), "p_value": p_value}


def prefers_chosen(log_likelihoods) -> list[float]:
    """1.0 where a model gives the chosen answer the higher log-likelihood, else 0.0 (DPO's own criterion: whole
    answers, so a longer answer starts lower).

    >>> prefers_chosen([[-3.0, -5.0], [-4.0, -2.5], [-1.0, -1.0]])
    [1.0, 0.0, 0.0]
    """
    return [float(c > r) for c, r in np.asarray(log_likelihoods, dtype=float)]


def implicit_margins(policy, reference, beta: float) -> list[float]:
    """DPO's implicit reward margin of each pair: beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) -
    log ref(rejected))); above 0 where tuning moved the model toward the chosen answer.

    >>> implicit_margins([[-2.0, -6.0]], [[-3.0, -5.0]], 0.1)
    [0.2]
    """
    moved = np.asarray(policy, dtype=float) - np.asarray(reference, dtype=float)
    return [round(float(beta * (c - r)), 6) for c, r in moved]


def reach(greedy: list[float], sampled: list[float]) -> dict:
    """Of the prompts the greedy reply got wrong, how many drew a right answer among the sampled ones: those a
    sampling RL method (GRPO, RLOO) can reinforce; on the rest the model's own samples carry no reward.

    >>> reach([1, 0, 0, 0], [0.75, 0.25, 0.0, 0.0])
    {'greedy_wrong': 3, 'wrong_with_a_right_sample': 1}
    """
    wrong = [s for g, s in zip(greedy, sampled, strict=True) if g < 0.5]
    return {"greedy_wrong": len(wrong), "wrong_with_a_right_sample": sum(s > 0 for s in wrong)}


def calibrated(log_likelihoods) -> np.ndarray:
    """Class scores with the model's prior over the class names taken out (batch calibration, Zhou et al. 2023):
    each row's probabilities over the classes divided by their mean over all the rows, in logs. A model that finds
    one name likelier whatever the prompt (a position prior for `A`, a frequent word) then picks by how much a prompt
    raises a class above its average. Uses the prompts only, never the answers.

    >>> scores = calibrated([[-0.1, -2.0], [-0.3, -1.0], [-0.2, -3.0]])  # always the first class, by a varying margin
    >>> scores.argmax(axis=1).tolist()
    [0, 1, 0]
    """
    logs = np.asarray(log_likelihoods, dtype=float)
    shifted = logs - logs.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # over the classes
    return log_p - np.log(np.exp(log_p).mean(axis=0, keepdims=True))


def paired(before: list[float], after: list[float], binary: bool) -> tuple[dict, np.ndarray, np.ndarray]:
    """Two models' scores on the same examples: a paired test (exact McNemar where the scores are pass/fail, read
    at 0.5; else Wilcoxon signed-rank), with how many examples went from fail to pass and back; also the masks of
    those examples.

    >>> paired([0, 0, 1, 1], [1, 1, 1, 0], binary=True)[0]
    {'test': 'mcnemar_exact', 'p_value': 1.0, 'fail_to_pass': 2, 'pass_to_fail': 1}
    """
    from scipy import stats

    first, second = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    gained, lost = (first < 0.5) & (second >= 0.5), (first >= 0.5) & (second < 0.5)
    if binary:
        discordant = int(gained.sum() + lost.sum())
        p_value = float(stats.binomtest(int(gained.sum()), discordant).pvalue) if discordant else 1.0
    else:
        p_value = float(stats.wilcoxon(second, first).pvalue) if np.any(second != first) else 1.0
    return ({"test": "mcnemar_exact" if binary else "wilcoxon", "p_value": p_value, "fail_to_pass": int(gained.sum()),
             "pass_to_fail": int(lost.sum())}, gained, lost)
