"""Scoring a model's replies: which metrics a recipe's test rows get by default, each metric per example and overall
(the task's scorer, ftkit's own `evaluate` metrics, the recipe's rewards), and what the scores alone do not say: how
far off numeric answers are, and which class a classification's replies give."""

from __future__ import annotations

import functools

import numpy as np

from ftkit.core import timing
from ftkit.core.rows import context, sentences
from ftkit.scoring import answers, metrics, tasks
from ftkit.scoring.classes import NO_CLASS, class_of
from ftkit.scoring.stats import bootstrap_ci, calibrated, pass_at_k

BINARY = ("task", "exact_match", "accuracy", "preference")


SENTENCE_METRICS = ["rouge_l", "f1", "exact_match", "lenient"]


def for_rows(cfg, rows: list[dict]):
    """The recipe with the default metrics for its test rows: answers that are sentences (`rows.sentences`) by
    ROUGE-L first, where exact match would call nearly every good reply wrong and a gain in
    wording invisible; prompts without answers by `reward` (the recipe's
    rl.rewards on each reply, weighted as in training; with several, each one too), held-out preference pairs by
    `preference` (how often a model prefers the chosen answer), not by matching free-text generations to it; where
    the recipe says how an answer is scored (`data.extract`), the replies are also scored against the chosen
    answer (`task`, `lenient`): a model can come to prefer the right answer and still not say it."""
    if cfg.eval.metrics or not rows or "text" in rows[0]:
        return cfg
    if "answer" not in rows[0]:
        return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"metrics": ["reward"]})})
    if "rejected" not in rows[0]:
        return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"metrics": SENTENCE_METRICS})}) \
            if cfg.data.whole_replies and sentences(rows) else cfg
    scored = [] if cfg.data.whole_replies else ["task", "lenient"]
    return cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"metrics": ["preference", *scored]})})


def metric_names(cfg) -> list[str]:
    """The recipe's metrics; the first is the headline. Default: the task's strict scorer (the answer where the
    format puts it) and the lenient one (the right answer anywhere in the reply); for data from files scored as a
    whole reply, exact match, token F1 and ROUGE-L, then lenient (answers that are sentences, preference pairs:
    see `for_rows`)."""
    if cfg.eval.metrics:
        return cfg.eval.metrics
    if not cfg.data.whole_replies:
        return ["task", "lenient"]
    return ["exact_match", "f1", "rouge_l", "lenient"]


@functools.cache
def load_metric(name: str):
    """An `evaluate` module: ftkit's own from its folder (no hub needed), else by hub id."""
    import evaluate

    return evaluate.load(str(metrics.path(name)) if name in metrics.LOCAL else name)


@timing.timed("scoring")
def score(cfg, outputs: list, references: list, rows: list[dict] | None = None
          ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-example scores of every metric (averaged over samples when there are several per prompt) and each
    metric's overall value (the corpus score for BLEU and chrF, else the mean). `reward` needs the `rows` (their
    prompts and reward columns)."""
    per_example, overall = {}, {}
    samples = [o if isinstance(o, list) else [o] for o in outputs]
    for name in metric_names(cfg):
        if name == "preference":  # log-likelihoods, not generations: evaluate_model adds it
            continue
        if name == "reward":
            per_example.update(_rewarded(cfg, samples, rows))
            overall.update({n: float(np.mean(v)) if v else 0.0 for n, v in per_example.items() if n.startswith("reward")})
            continue
        if name in ("task", "lenient"):
            task = tasks.for_data(cfg.data)
            if name == "task":
                values = [[task.score(o, ref) for o in outs] for outs, ref in zip(samples, references)]
            else:  # a number the reply only repeats from the question is not an answer it found, nor a list of options
                given = [(context(r), {"options": r["options"]} if r.get("options") else {}) for r in rows] if rows \
                    else [("", {})] * len(references)
                values = [[task.lenient(o, ref, q, **more) for o in outs]
                          for outs, ref, (q, more) in zip(samples, references, given)]
            per_example[name] = [float(np.mean(v)) for v in values]
            overall[name] = float(np.mean(per_example[name])) if values else 0.0
            continue
        flat = [o for outs in samples for o in outs]
        repeated = [ref for outs, ref in zip(samples, references) for _ in outs]
        if any(isinstance(ref, list) for ref in repeated):  # several acceptable answers: ftkit's metrics take them
            repeated = [answers.alternatives(ref) if name in metrics.LOCAL else answers.alternatives(ref)[0]
                        for ref in repeated]
        result = load_metric(name).compute(predictions=flat, references=repeated)
        key = name if name in result else next(k for k, v in result.items() if isinstance(v, (int, float)))
        overall[name] = float(result[key])
        if "per_example" in result:
            k = len(samples[0]) if samples else 1
            per_example[name] = [float(np.mean(result["per_example"][i * k:(i + 1) * k])) for i in range(len(samples))]
    return per_example, overall


def _rewarded(cfg, samples: list[list[str]], rows: list[dict]) -> dict[str, list[float]]:
    """Per prompt, the recipe's weighted reward of its replies (averaged over samples) as `reward` and, where there
    are several rewards, each one's as `reward/<name>`."""
    from ftkit.scoring import rewards

    functions, weights = rewards.build(cfg, ".", rows)
    flat_rows = [r for r, outs in zip(rows, samples) for _ in outs]
    total, each = rewards.score_replies(functions, weights, flat_rows, [o for outs in samples for o in outs])
    named = {"reward": total, **({f"reward/{n}": v for n, v in each.items()} if len(each) > 1 else {})}
    out, start = {n: [] for n in named}, 0
    for outs in samples:
        for n, values in named.items():
            out[n].append(float(np.mean(values[start:start + len(outs)])))
        start += len(outs)
    return out


def summary(cfg, per_example: dict, overall: dict, outputs: list, references: list[str], cut: list) -> dict:
    """The headline metric with its 95% bootstrap CI, every metric's value (with a CI where per-example), and the
    share of replies cut at eval.max_new_tokens."""
    primary = metric_names(cfg)[0]
    label = "accuracy" if primary == "task" else primary
    headline = per_example.get(primary)
    ci = bootstrap_ci(headline, seed=cfg.seed) if headline else (None, None)
    flat_cut = [c for flags in cut for c in (flags if isinstance(flags, list) else [flags])]
    out = {"metric": label, label: overall[primary], "ci95": list(ci), "n": len(references),
           "cut_at_limit": round(sum(flat_cut) / max(len(flat_cut), 1), 4),
           "metrics": {name: {"value": value, "ci95": list(bootstrap_ci(per_example[name], seed=cfg.seed))
                              if per_example.get(name) else None} for name, value in overall.items()}}
    if cfg.eval.samples > 1 and primary in BINARY:
        task = tasks.for_data(cfg.data)
        correct = [sum(task.score(o, ref) >= 0.5 for o in outs) for outs, ref in zip(outputs, references)]
        out[f"pass@{cfg.eval.samples}"] = float(np.mean([pass_at_k(c, cfg.eval.samples, cfg.eval.samples)
                                                         for c in correct]))
    return out


def numeric_error(cfg, outputs: list, references: list[str], prompts: list[str] | None = None) -> dict | None:
    """For numeric answers, how far off the replies are: the median and mean absolute error (95% bootstrap CI) over
    the replies that give a number where the task reads it, and the share that do. A wrong number the reply copies
    from its prompt (`prompts`: "To add 964 ..." read as 964) is an echo, not an estimate: it counts as no number
    (`echoes` says how many), so a model that restates the question is not credited with being close. None where an
    answer is not a number, or the whole reply is the answer (`data.extract: exact`).

    >>> cfg = type("C", (), {"seed": 0, "data": type("D", (), {"task": "addition"})()})()
    >>> numeric_error(cfg, ["68", "70", "no idea", "58"], ["68", "68", "68", "68"])
    {'median': 2.0, 'mean': 4.0, 'ci95': [0.0, 10.0], 'with_a_number': 0.75, 'n': 3}
    >>> numeric_error(cfg, ["23 + 45", "68", "70"], ["68"] * 3, ["What is 23 plus 45?"] * 3)
    {'median': 1.0, 'mean': 1.0, 'ci95': [0.0, 2.0], 'with_a_number': 0.6667, 'n': 2, 'echoes': 1}
    """
    task = tasks.for_data(cfg.data)
    mode, pattern = getattr(task, "extract", "exact"), getattr(task, "pattern", None)
    if mode == "exact" or not references or any(answers.as_number(answers.reference(a, mode, pattern)) is None
                                                 for r in references for a in answers.alternatives(r)):
        return None
    asked = prompts or [""] * len(references)
    replies = [(o, ref, prompt) for outs, ref, prompt in zip(outputs, references, asked)
               for o in (outs if isinstance(outs, list) else [outs])]
    errors, echoes = [], 0
    for output, ref, prompt in replies:
        error = answers.distance(output, ref, mode, pattern)
        copied = error and answers.as_number(answers.extract(output, mode, pattern)) in {
            answers.as_number(n) for n in answers.numbers(prompt)}
        echoes += bool(copied)
        if error is not None and not copied:
            errors.append(error)
    extra = {"echoes": echoes} if echoes else {}
    if not errors:
        return {"with_a_number": 0.0, "n": 0, **extra}
    return {"median": float(np.median(errors)), "mean": float(np.mean(errors)),
            "ci95": list(bootstrap_ci(errors, seed=cfg.seed)), "with_a_number": round(len(errors) / len(replies), 4),
            "n": len(errors), **extra}


def class_figures(cfg, outputs: list, rows: list[dict], names: list[str]) -> dict:
    """For a classification (`rows.classes`): which class each reply gives, read as the task reads an answer (the
    first class it scores right against; none, a reply that gives no class), the confusion matrix (a row per
    reference class, a column per class given, then none), macro-F1 over the classes, and the share of replies
    that give none.

    >>> cfg = type("C", (), {"data": type("D", (), {"task": None, "extract": "exact", "extract_regex": None,
    ...                                            "numeric_tolerance": 0.0})()})()
    >>> rows = [{"answer": a} for a in ("pos", "pos", "neg", "neg")]
    >>> class_figures(cfg, ["Pos.", "neg", "neg", "I cannot say"], rows, ["pos", "neg"])
    {'names': ['pos', 'neg'], 'confusion': [[1, 1, 0], [0, 1, 1]], 'macro_f1': 0.5833, 'no_class': 0.25}
    """
    from sklearn.metrics import confusion_matrix, f1_score

    task = tasks.for_data(cfg.data)
    given = [next((n for n in names if task.score(o if isinstance(o, str) else o[0], n) >= 0.5), NO_CLASS)
             for o in outputs]
    wanted = [class_of(r["answer"], names) for r in rows]
    matrix = confusion_matrix(wanted, given, labels=[*names, NO_CLASS])[:len(names)]
    macro = f1_score(wanted, given, labels=names, average="macro", zero_division=0)
    return {"names": names, "confusion": matrix.tolist(), "macro_f1": round(float(macro), 4),
            "no_class": round(given.count(NO_CLASS) / len(given), 4)}


def likeliest(log_likelihoods, rows: list[dict], names: list[str], seed: int = 0) -> dict:
    """How often the class a model finds likeliest as its whole reply is the reference's: its grasp of the task
    whatever it writes (a base model that answers in sentences scores 0 by exact match and may still know), with a
    95% bootstrap CI, and how often it picked each class (a model that picks one class for nearly every prompt
    shows a prior for that name, not a reading of the prompt).

    >>> rows = [{"answer": "pos"}, {"answer": "neg"}, {"answer": "neg"}]
    >>> found = likeliest([[-1.0, -3.0], [-2.0, -0.5], [-0.2, -0.9]], rows, ["pos", "neg"])
    >>> found["value"], found["picked"]
    (0.6667, {'pos': 2, 'neg': 1})
    """
    def read(scores):
        picked = [names[int(i)] for i in scores.argmax(axis=1)]
        right = [float(p == class_of(r["answer"], names)) for p, r in zip(picked, rows)]
        return {"value": round(float(np.mean(right)), 4),
                "ci95": [round(v, 4) for v in bootstrap_ci(right, seed=seed)], "picked": {n: picked.count(n) for n in names}}

    scores = np.asarray(log_likelihoods, dtype=float)
    return {**read(scores), "n": len(rows), "calibrated": read(calibrated(scores))}
