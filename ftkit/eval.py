"""Eval stage: every model on the same held-out examples, measured for the three claims of fine-tuning.

1. Task performance: batched generation on the test split, scored by `eval.metrics` (the task's scorer and
   `evaluate` metrics that ship with ftkit), with bootstrap confidence intervals, the loss on the reference answers,
   and, against the base model, a paired test and the examples that flipped.
2. Generalization: the same on a related but shifted test set (`data/generalization.jsonl`).
3. Robustness: the headline metric on test prompts perturbed one way at a time, and its change.

Plain-text data (continued pre-training) is measured by perplexity instead, with greedy continuations of the
first few test texts as examples. Predictions and per-example scores go to `<run_dir>/eval/`.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import numpy as np
import torch

from ftkit import answers, judge, metrics, models, robustness, rundir, tasks
from ftkit.generation import continuation_prompt, generate
from ftkit.io import write_jsonl
from ftkit.recipe import data_problem
from ftkit.rows import (NO_CLASS, acceptable, class_of, classes, context, imitated, kind, messages, sentences,
                        trained_text, with_lengths)

BINARY = ("task", "exact_match", "accuracy", "preference")
SENTENCE_METRICS = ["rouge_l", "f1", "exact_match", "lenient"]


def tuned_path(cfg, run_dir: Path, name: str) -> Path | None:
    """The saved adapter or model of a tuned stage or of an `eval.extra` label (None for the base model)."""
    if name == "base":
        return None
    if name in cfg.eval.extra:
        return Path(cfg.eval.extra[name])
    path = rundir.tuned_dir(run_dir, name)
    if path is None:
        raise FileNotFoundError(f"eval.models lists {name!r} but {rundir.stage_dir(run_dir, name)} holds no adapter or "
                                "model: run the "
                                f"{name} stage first or remove {name!r} from eval.models")
    return path


@torch.inference_mode()
def token_losses(model, tokenizer, texts: list[str], batch_size: int, max_length: int,
                 skip: list[int] | None = None) -> np.ndarray:
    """(summed negative log-likelihood, scored tokens) of each text, leaving out its first `skip[i]` tokens (the
    prompt, when scoring reference answers)."""
    tokenizer.padding_side = "right"
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=max_length, add_special_tokens=False).to(model.device)
        logits = model(**batch).logits[:, :-1].float()
        targets, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].clone()
        for row, k in enumerate((skip or [0] * len(texts))[start:start + batch_size]):
            mask[row, :max(k - 1, 0)] = 0  # position j predicts token j + 1
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        out += zip((nll * mask).sum(1).tolist(), mask.sum(1).tolist())
    return np.asarray(out, dtype=float)


def answer_losses(model, tokenizer, rows: list[dict], batch_size: int, max_length: int) -> np.ndarray:
    """Loss of each reference answer given its prompt, through the chat template, as SFT trains it."""
    prompts = [tokenizer.apply_chat_template(messages(r), tokenize=False, add_generation_prompt=True) for r in rows]
    skip = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    return token_losses(model, tokenizer, [trained_text(r, tokenizer) for r in rows], batch_size, max_length, skip)


def evaluate_text(cfg, model, tokenizer, rows: list[dict], run_dir: Path, name: str) -> dict:
    """Perplexity on the test texts (95% bootstrap CI over texts), and greedy continuations of the first
    `eval.n_examples_shown` texts from their first half."""
    start = time.perf_counter()
    losses = token_losses(model, tokenizer, [trained_text(r, tokenizer) for r in rows], cfg.eval.batch_size,
                          cfg.sft.max_length)
    prompts = [continuation_prompt(r["text"]) for r in rows[:cfg.eval.n_examples_shown]]
    outputs = generate(model, tokenizer, prompts, cfg.eval.batch_size, cfg.eval.max_new_tokens)
    seconds = time.perf_counter() - start
    per_text = np.exp(losses[:, 0] / np.maximum(losses[:, 1], 1))
    records = [{"prompt": prompts[i] if i < len(prompts) else r["text"][:200],
                "reference": r["text"][len(prompts[i]):].strip()[:300] if i < len(prompts) else "",
                "output": outputs[i] if i < len(outputs) else "", "perplexity": round(float(p), 3)}
               for i, (r, p) in enumerate(zip(rows, per_text))]
    write_jsonl(rundir.eval_file(run_dir, "predictions", name), records)
    rng = np.random.default_rng(cfg.seed)
    idx = rng.integers(0, len(losses), size=(1000, len(losses)))
    boot = np.exp(losses[idx, 0].sum(1) / losses[idx, 1].sum(1))
    return {"metric": "perplexity", "perplexity": float(np.exp(losses[:, 0].sum() / losses[:, 1].sum())),
            "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))], "n": len(rows),
            "tokens": int(losses[:, 1].sum()), "generate_seconds": round(seconds, 1)}


def preference_log_likelihoods(model, tokenizer, rows: list[dict], batch_size: int, max_length: int) -> np.ndarray:
    """Summed log-likelihood of each held-out pair's chosen and rejected answer given its prompt: shape (n, 2)."""
    chosen = answer_losses(model, tokenizer, rows, batch_size, max_length)[:, 0]
    rejected = answer_losses(model, tokenizer, [{**r, "answer": r["rejected"]} for r in rows], batch_size,
                             max_length)[:, 0]
    return -np.stack([chosen, rejected], axis=1)


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
    from ftkit import rewards

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


def pass_at_k(correct: int, n: int, k: int) -> float:
    """Unbiased pass@k from n samples of which `correct` pass (Chen et al., 2021).

    >>> pass_at_k(1, 4, 1), pass_at_k(1, 4, 4), pass_at_k(0, 4, 2)
    (0.25, 1.0, 0.0)
    """
    if n - correct < k:
        return 1.0
    return 1.0 - math.comb(n - correct, k) / math.comb(n, k)


def _summary(cfg, per_example: dict, overall: dict, outputs: list, references: list[str], cut: list) -> dict:
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


def class_log_likelihoods(model, tokenizer, rows: list[dict], names: list[str], batch_size: int,
                          max_length: int) -> np.ndarray:
    """Summed log-likelihood of each class name as the whole reply to each row (its end-of-turn token included),
    through the chat template: shape (n, classes)."""
    return -np.stack([answer_losses(model, tokenizer, [{**r, "answer": n} for r in rows], batch_size, max_length)[:, 0]
                      for n in names], axis=1)


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


def sampled_count(cfg) -> int:
    """eval.sampled as run: the recipe's, else 4 when an RL stage samples its completions (GRPO, RLOO) and eval is
    greedy, else 0."""
    if cfg.eval.sampled is not None:
        return cfg.eval.sampled
    return 4 if "rl" in cfg.stages and cfg.rl.method in ("grpo", "rloo") and cfg.eval.temperature == 0 else 0


def _sampled(cfg, model, tokenizer, rows: list[dict], references: list[str], tick) -> tuple[list[float], dict]:
    """The headline metric averaged over `sampled_count` completions per prompt sampled at rl.temperature: per
    prompt, and overall with its 95% bootstrap CI. GRPO and RLOO raise this expectation; greedy decoding changes
    only where the most likely answer changes."""
    k, temperature = sampled_count(cfg), cfg.rl.temperature
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    outputs = generate(model, tokenizer, [messages(r) for r in rows], cfg.eval.batch_size, cfg.eval.max_new_tokens,
                       temperature, k, cfg.eval.stop, tick)
    scores = score(cfg, outputs, references, rows)[0][metric_names(cfg)[0]]
    return scores, {"value": float(np.mean(scores)), "ci95": list(bootstrap_ci(scores, seed=cfg.seed)), "k": k,
                    "temperature": temperature, "seconds": round(time.perf_counter() - start, 1)}


def reach(greedy: list[float], sampled: list[float]) -> dict:
    """Of the prompts the greedy reply got wrong, how many drew a right answer among the sampled ones: those a
    sampling RL method (GRPO, RLOO) can reinforce; on the rest the model's own samples carry no reward.

    >>> reach([1, 0, 0, 0], [0.75, 0.25, 0.0, 0.0])
    {'greedy_wrong': 3, 'wrong_with_a_right_sample': 1}
    """
    wrong = [s for g, s in zip(greedy, sampled, strict=True) if g < 0.5]
    return {"greedy_wrong": len(wrong), "wrong_with_a_right_sample": sum(s > 0 for s in wrong)}


def _run(cfg, model, tokenizer, rows: list[dict], progress=None) -> tuple[list, list]:
    """(outputs, whether each was cut at eval.max_new_tokens)."""
    return generate(model, tokenizer, [messages(r) for r in rows], cfg.eval.batch_size, cfg.eval.max_new_tokens,
                    cfg.eval.temperature, cfg.eval.samples, cfg.eval.stop, progress, return_cut=True)


def _counter(run_dir: Path, name: str, total: int):
    """A progress callback counting the prompts model `name` has answered, written for `ftkit run` to show."""
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        rundir.write_progress(run_dir, "eval", done[0], total, f"prompts ({name})")

    return tick


def _records(rows: list[dict], outputs: list, per_example: dict, cut: list, perturbation: str | None = None,
             log_likelihood: list | None = None, sampled: list | None = None, finished: dict | None = None
             ) -> list[dict]:
    return [{**({"perturbation": perturbation} if perturbation else {}), "prompt": r["prompt"],
             "reference": r.get("answer", ""), **({"accepted": r["accepted"]} if r.get("accepted") else {}),
             **({"rejected": r["rejected"], "log_likelihood": log_likelihood[i]} if log_likelihood else {}),
             "output": o if isinstance(o, str) else o[0], **({"samples": o} if isinstance(o, list) else {}),
             "score": next(iter(per_example.values()), [None] * len(rows))[i],
             "scores": {name: values[i] for name, values in per_example.items()},
             "cut": c if isinstance(c, bool) else any(c), **({"sampled_score": sampled[i]} if sampled else {}),
             **({"finished": finished[i]} if finished and i in finished else {})}
            for i, (r, o, c) in enumerate(zip(rows, outputs, cut))]


def evaluate_model(cfg, run_dir: str | Path, name: str) -> dict:
    """Evaluate model `name` (base/sft/rl or an eval.extra label) for the three claims; write its predictions to
    `<run_dir>/eval/`."""
    rows = imitated(rundir.load_split(run_dir, "test"))  # feedback: scored against the desirable answers
    problem = data_problem(["eval"], cfg.rl.method, kind(rows), list(cfg.rl.rewards), cfg.eval.metrics)
    if problem:  # the data stage's rule, again for a run directory made before the recipe changed
        raise ValueError(f"the test split: {problem}")
    cfg = for_rows(cfg, rows)
    if cfg.eval.temperature > 0:
        torch.manual_seed(cfg.seed)
    rundir.remove_eval_files(run_dir, [k for k in rundir.EVAL_FILES if k != "flips"], name)  # an earlier eval's
    model, tokenizer = models.load(cfg.model, tuned=tuned_path(cfg, Path(run_dir), name))
    train = rundir.load_split(run_dir, "train", empty_ok=True)
    cfg = with_lengths(cfg, train + rows, tokenizer)
    if "text" in rows[0]:
        return {**evaluate_text(cfg, model, tokenizer, rows, run_dir, name), "max_new_tokens": cfg.eval.max_new_tokens}
    primary = metric_names(cfg)[0]
    gen_rows = rundir.load_split(run_dir, "generalization") if rundir.has_split(run_dir, "generalization") else []
    subset = rows[:cfg.eval.robustness_size] if cfg.eval.perturbations else []
    sampling = sampled_count(cfg) > 0 and primary != "preference"
    tick = _counter(run_dir, name, len(rows) * (1 + sampling) + len(gen_rows) + len(subset) * len(cfg.eval.perturbations))
    start = time.perf_counter()
    outputs, cut = _run(cfg, model, tokenizer, rows, tick)
    seconds = time.perf_counter() - start
    references = [acceptable(r) for r in rows]
    per_example, overall = score(cfg, outputs, references, rows)
    extra = {}
    if "preference" in metric_names(cfg):
        if "rejected" not in rows[0]:
            raise ValueError("eval.metrics names preference, but the test split holds no preference pairs (prompt, "
                             "chosen, rejected); remove it or use preference data")
        likelihoods = preference_log_likelihoods(model, tokenizer, rows, cfg.eval.batch_size, cfg.sft.max_length)
        per_example["preference"] = prefers_chosen(likelihoods)
        overall["preference"] = float(np.mean(per_example["preference"]))
        extra = {"log_likelihood": [[round(float(v), 4) for v in pair] for pair in likelihoods]}
        per_example = {n: per_example[n] for n in metric_names(cfg) if n in per_example}  # the headline first
        overall = {n: overall[n] for n in metric_names(cfg) if n in overall}
    sampled, sampled_figures = (_sampled(cfg, model, tokenizer, rows, references, tick)
                                if sampling and primary in per_example else (None, None))
    finishing, finished = (_finished(cfg, model, tokenizer, rows, per_example, cut, run_dir, name)
                           if primary in per_example and primary != "preference" else (None, {}))
    write_jsonl(rundir.eval_file(run_dir, "predictions", name),
                _records(rows, outputs, per_example, cut, **extra, sampled=sampled, finished=finished))
    result = {**_summary(cfg, per_example, overall, outputs, references, cut), "generate_seconds": round(seconds, 1),
              "max_new_tokens": cfg.eval.max_new_tokens, **({"finished": finishing} if finishing else {})}
    error = numeric_error(cfg, outputs, references, [r["prompt"] for r in rows]) if primary != "preference" else None
    if error:
        result["numeric_error"] = error
    names = classes(train or rows, rows) if primary != "preference" else None  # as the data stage found them
    if names:
        result["classes"] = class_figures(cfg, outputs, rows, names)
        if cfg.eval.likeliest_class:
            likelihoods = class_log_likelihoods(model, tokenizer, rows, names, cfg.eval.batch_size, cfg.sft.max_length)
            result["classes"]["likeliest"] = likeliest(likelihoods, rows, names, cfg.seed)
    if sampled_figures:
        result["sampled"] = {**sampled_figures, **(reach(per_example[primary], sampled) if primary in BINARY else {})}
    if extra:
        margins = [c - r for c, r in extra["log_likelihood"]]
        result["log_likelihood_margin"] = {"mean": float(np.mean(margins)),
                                           "ci95": list(bootstrap_ci(margins, seed=cfg.seed))}
    if cfg.eval.answer_loss and "answer" in rows[0]:
        losses = answer_losses(model, tokenizer, rows, cfg.eval.batch_size, cfg.sft.max_length)
        result["answer_loss"] = float(losses[:, 0].sum() / max(losses[:, 1].sum(), 1))
        result["answer_perplexity"] = math.exp(result["answer_loss"])
    if gen_rows and primary != "preference":
        result["generalization"] = _generalization(cfg, model, tokenizer, gen_rows, run_dir, name, tick)
    if subset and primary in per_example and primary != "preference":
        clean = per_example[primary][:len(subset)]
        result["robustness"] = _robustness(cfg, model, tokenizer, subset, clean, run_dir, name, tick)
    return result


def finish_budget(limit: int) -> int:
    """The room a cut reply gets to finish: twice eval's limit, at least 128 tokens.

    >>> finish_budget(6), finish_budget(200)
    (128, 400)
    """
    return max(128, 2 * limit)


def _finished(cfg, model, tokenizer, rows: list[dict], per_example: dict, cut: list, run_dir, name: str):
    """The first `eval.finish_cut` test prompts whose reply was cut at eval.max_new_tokens, answered again (the
    same decoding) with room to finish (`finish_budget`): each metric on them as cut and as finished, and how many
    are still cut. It tells a model that knows the answer but explains first (a base model told to give the number
    only) from one that does not know it, without changing the headline, which scores every model in one budget.
    None when no reply was cut, or eval samples several completions per prompt. Also {row index: finished reply}."""
    picked = [i for i, c in enumerate(cut) if c is True][:cfg.eval.finish_cut]
    if not picked or cfg.eval.samples > 1:
        return None, {}
    budget, subset = finish_budget(cfg.eval.max_new_tokens), [rows[i] for i in picked]
    if cfg.eval.temperature > 0:
        torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    texts, still = generate(model, tokenizer, [messages(r) for r in subset], cfg.eval.batch_size, budget,
                            cfg.eval.temperature, 1, cfg.eval.stop, _counter(run_dir, f"{name}, finishing cut replies",
                                                                            len(subset)), return_cut=True)
    scores, _ = score(cfg, texts, [acceptable(r) for r in subset], subset)
    figures = {"n": len(picked), "cut": sum(c is True for c in cut), "max_new_tokens": budget,
               "still_cut": sum(still), "seconds": round(time.perf_counter() - start, 1),
               "metrics": {m: {"cut": float(np.mean([per_example[m][i] for i in picked])),
                               "finished": float(np.mean(scores[m]))} for m in scores if m in per_example}}
    return figures, dict(zip(picked, texts))


def _generalization(cfg, model, tokenizer, rows: list[dict], run_dir, name: str, tick) -> dict:
    """The headline metric on the shifted set (its predictions to eval/generalization_<model>.jsonl), and how far
    off its numbers are where the answers are numbers."""
    primary = metric_names(cfg)[0]
    outputs, cut = _run(cfg, model, tokenizer, rows, tick)
    scores, overall = score(cfg, outputs, [acceptable(r) for r in rows], rows)
    write_jsonl(rundir.eval_file(run_dir, "generalization", name), _records(rows, outputs, scores, cut))
    error = numeric_error(cfg, outputs, [acceptable(r) for r in rows], [r["prompt"] for r in rows])
    return {"value": overall[primary], "n": len(rows),
            "ci95": list(bootstrap_ci(scores[primary], seed=cfg.seed)) if scores.get(primary) else None,
            **({"numeric_error": error} if error else {})}


def _robustness(cfg, model, tokenizer, subset: list[dict], clean: list[float], run_dir, name: str, tick) -> dict:
    """The headline metric on `subset` under each perturbation, and its change from the unperturbed scores `clean`
    with a 95% paired bootstrap interval (the perturbed predictions to eval/robustness_<model>.jsonl)."""
    primary = metric_names(cfg)[0]
    figures, records = {"clean": {"value": float(np.mean(clean)), "n": len(subset)}}, []
    for perturbation in cfg.eval.perturbations:
        perturbed = robustness.perturb(subset, perturbation, cfg.seed, tasks.for_data(cfg.data))
        outputs, cut = _run(cfg, model, tokenizer, perturbed, tick)
        scores, _ = score(cfg, outputs, [acceptable(r) for r in perturbed], perturbed)
        records += _records(perturbed, outputs, scores, cut, perturbation=perturbation)
        value = float(np.mean(scores[primary]))
        changes = [after - before for before, after in zip(clean, scores[primary])]
        figures[perturbation] = {"value": value, "change": value - figures["clean"]["value"], "n": len(subset),
                         "change_ci95": list(bootstrap_ci(changes, seed=cfg.seed))}
    write_jsonl(rundir.eval_file(run_dir, "robustness", name), records)
    return figures


def paired_test(cfg, run_dir: str | Path, results: dict) -> dict:
    """Each tuned model against the base on the same test examples, and against the model it started from (RL
    against SFT): a paired test on the headline metric (exact McNemar for pass/fail scores, Wilcoxon signed-rank
    otherwise) and the examples that flipped, written to `eval/flips_<model>.jsonl` (`flips_rl_vs_sft.jsonl`). Adds
    `vs_base` (and `vs_sft`) to each tuned model's results and returns them."""
    rows = rundir.load_split(run_dir, "test")
    if "text" in rows[0]:
        return results
    cfg = for_rows(cfg, rows)
    rundir.remove_eval_files(run_dir, ["flips"])  # an earlier eval's comparisons, of models it may no longer have
    started = rundir.metrics(run_dir).get("rl", {}).get("start_from")
    for name in results:
        against = [m for m in ("base", started if name == "rl" else None) if m and m in results and m != name]
        for other in against:
            paired, flips = compare_predictions(cfg, rundir.load_predictions(run_dir, other),
                                                rundir.load_predictions(run_dir, name), other, name)
            write_jsonl(rundir.eval_file(run_dir, "flips", name if other == "base" else f"{name}_vs_{other}"), flips)
            results[name][f"vs_{other}"] = paired
    if "rl" in results and started in results and cfg.rl.method == "dpo" and "preference" in metric_names(cfg):
        beta = cfg.rl.kl_beta
        policy, reference = ([p["log_likelihood"] for p in rundir.load_predictions(run_dir, m)] for m in ("rl", started))
        margins = implicit_margins(policy, reference, beta)
        results["rl"]["implicit_reward"] = {
            "reference": started, "beta": beta, "margin": float(np.mean(margins)),
            "ci95": list(bootstrap_ci(margins, seed=cfg.seed)), "accuracy": float(np.mean([m > 0 for m in margins]))}
    return results


def judge_models(cfg, run_dir: str | Path, results: dict) -> dict:
    """`eval.judge`: the judge model reads the first `examples` test prompts with each evaluated model's replies,
    grading them or comparing them (both orders) with `against`'s replies or the reference answers; verdicts to
    `eval/judge_<model>.jsonl`, the summary with a 95% interval to each model's results as `judge`."""
    spec = cfg.eval.judge
    rows = imitated(rundir.load_split(run_dir, "test"))
    if spec is None or "text" in rows[0]:
        return results
    if spec.mode == "pairwise" and spec.against != "reference" and spec.against not in results:
        raise ValueError(f"eval.judge.against is {spec.against!r}, which this eval did not evaluate "
                         f"({', '.join(results)}); add it to eval.models or judge against reference")
    if spec.mode == "pairwise" and spec.against == "reference" and "answer" not in rows[0]:
        raise ValueError("eval.judge.against is reference, and these test prompts have no reference answers; compare "
                         "with a model instead (against: base), or grade the replies (mode: grade)")
    judge_id = cfg.model.id if spec.model == "base" else spec.model
    model, tokenizer = models.load(cfg.model.model_copy(update={"id": judge_id, "adapter": "none",
                                                                "revision": cfg.model.revision if spec.model == "base"
                                                                else None}))
    replies = {name: [p["output"] for p in rundir.load_predictions(run_dir, name)[:spec.examples]] for name in results}
    others = [r["answer"] for r in rows[:spec.examples]] if spec.against == "reference" else replies.get(spec.against)
    for name in results:
        if spec.mode == "pairwise" and name == spec.against:
            continue
        items = [{"prompt": r["prompt"], "candidate": reply, **({"other": other} if spec.mode == "pairwise" else {})}
                 for r, reply, other in zip(rows, replies[name], others or replies[name])]
        ask = judge.pairwise if spec.mode == "pairwise" else judge.grade
        records = ask(model, tokenizer, items, spec.rubric, spec.batch_size, spec.max_new_tokens)
        write_jsonl(rundir.eval_file(run_dir, "judge", name), records)
        figures, values = judge.summary(records)
        template = judge.PAIRWISE if spec.mode == "pairwise" else judge.GRADE
        results[name]["judge"] = {"judge": judge_id, "mode": spec.mode, "against": spec.against if spec.mode ==
                                  "pairwise" else None, "rubric": spec.rubric, "prompt": template, **figures,
                                  "ci95": list(bootstrap_ci(values, seed=cfg.seed)) if values else None}
    return results


def compare_predictions(cfg, before: list[dict], after: list[dict], before_name: str, after_name: str):
    """(paired test, flips) of two models' predictions on the same examples.

    >>> cfg = type("C", (), {"eval": type("E", (), {"metrics": ["task"]}), "data": None})()
    >>> p = [{"prompt": "q", "reference": "r", "output": "x", "score": s} for s in (0, 0, 1, 1)]
    >>> q = [{**r, "score": s} for r, s in zip(p, (1, 1, 1, 0))]
    >>> compare_predictions(cfg, p, q, "sft", "rl")[0]
    {'test': 'mcnemar_exact', 'p_value': 1.0, 'fail_to_pass': 2, 'pass_to_fail': 1}
    """
    from scipy import stats

    binary = metric_names(cfg)[0] in BINARY
    first, second = np.array([p["score"] for p in before]), np.array([p["score"] for p in after])
    gained, lost = (first < 0.5) & (second >= 0.5), (first >= 0.5) & (second < 0.5)
    if binary:
        discordant = int(gained.sum() + lost.sum())
        p_value = float(stats.binomtest(int(gained.sum()), discordant).pvalue) if discordant else 1.0
    else:
        p_value = float(stats.wilcoxon(second, first).pvalue) if np.any(second != first) else 1.0
    flips = [{"flip": "fail→pass" if gained[i] else "pass→fail", "prompt": b["prompt"], "reference": b["reference"],
              **({"accepted": b["accepted"]} if b.get("accepted") else {}), before_name: b["output"],
              after_name: a["output"]}
             for i, (b, a) in enumerate(zip(before, after)) if gained[i] or lost[i]]
    paired = {"test": "mcnemar_exact" if binary else "wilcoxon", "p_value": p_value,
              "fail_to_pass": int(gained.sum()), "pass_to_fail": int(lost.sum())}
    if all("sampled_score" in p for p in before + after) and before:
        paired["sampled_change"] = sampled_change([p["sampled_score"] for p in before],
                                                  [p["sampled_score"] for p in after])
    return paired, flips


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


def bootstrap_ci(scores: list[float], samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap confidence interval of the mean score."""
    values = np.asarray(scores, dtype=float)
    means = np.random.default_rng(seed).choice(values, size=(samples, len(values))).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
