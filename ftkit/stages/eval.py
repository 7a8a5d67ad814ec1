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

import math
import time
from pathlib import Path

import numpy as np
import torch

from ftkit.core import rundir, timing
from ftkit.core.io import write_jsonl
from ftkit.core.rows import acceptable, imitated, kind, messages, trained_text, with_lengths
from ftkit.models import judge, loader
from ftkit.models.generation import continuation_prompt, generate
from ftkit.models.likelihood import answer_losses, class_log_likelihoods, preference_log_likelihoods, token_losses
from ftkit.recipe import data_problem, fitted
from ftkit.scoring import robustness, stats, tasks
from ftkit.scoring.classes import classes
from ftkit.scoring.grading import (
    BINARY,
    class_figures,
    for_rows,
    likeliest,
    metric_names,
    numeric_error,
    score,
    summary,
)
from ftkit.scoring.stats import bootstrap_ci, implicit_margins, prefers_chosen, reach


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


def evaluate_text(cfg, model, tokenizer, rows: list[dict], run_dir: Path, name: str) -> dict:
    """Perplexity on the test texts (95% bootstrap CI over texts), and greedy continuations of the first
    `eval.n_examples_shown` texts from their first half."""
    start = time.perf_counter()
    losses = token_losses(model, tokenizer, [trained_text(r, tokenizer) for r in rows], cfg.eval.batch_size,
                          cfg.sft.max_length)
    prompts = [continuation_prompt(r["text"]) for r in rows[:cfg.eval.n_examples_shown]]
    with timing.phase("generation"):
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


def sampled_count(cfg) -> int:
    """eval.sampled as run: the recipe's, else 4 when an RL stage samples its completions (GRPO, RLOO) and eval is
    greedy, else 0."""
    if cfg.eval.sampled is not None:
        return cfg.eval.sampled
    return 4 if "rl" in cfg.stages and cfg.rl.method in ("grpo", "rloo") and cfg.eval.temperature == 0 else 0


def sampled_models(cfg, run_dir: str | Path) -> list[str]:
    """eval.sampled_models as run: the recipe's, else the RL model and the model it started from (where the recipe
    has an RL model to evaluate), else every evaluated model."""
    if cfg.eval.sampled_models is not None:
        return list(cfg.eval.sampled_models)
    if "rl" in cfg.eval.models:
        started = rundir.metrics(run_dir).get("rl", {}).get("start_from") or ("sft" if "sft" in cfg.stages else "base")
        return ["rl", started]
    return list(cfg.eval.models)


@timing.timed("sampled replies")
def _sampled(cfg, model, tokenizer, rows: list[dict], references: list[str], tick) -> tuple[list[float], dict]:
    """The headline metric averaged over `sampled_count` completions per prompt sampled at rl.temperature: per
    prompt, and overall with its 95% bootstrap CI (`rows`: the first eval.sampled_size test prompts). GRPO and RLOO
    raise this expectation; greedy decoding changes only where the most likely answer changes."""
    k, temperature = sampled_count(cfg), cfg.rl.temperature
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    outputs = generate(model, tokenizer, [messages(r) for r in rows], cfg.eval.batch_size, cfg.eval.max_new_tokens,
                       temperature, k, cfg.eval.stop, tick)
    scores = score(cfg, outputs, references, rows)[0][metric_names(cfg)[0]]
    return scores, {"value": float(np.mean(scores)), "ci95": list(bootstrap_ci(scores, seed=cfg.seed)), "k": k,
                    "n": len(rows),
                    "temperature": temperature, "seconds": round(time.perf_counter() - start, 1)}


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
             "cut": c if isinstance(c, bool) else any(c),
             **({"sampled_score": sampled[i]} if sampled and i < len(sampled) else {}),
             **({"finished": finished[i]} if finished and i in finished else {})}
            for i, (r, o, c) in enumerate(zip(rows, outputs, cut))]


def evaluate_model(cfg, run_dir: str | Path, name: str) -> dict:
    """Evaluate model `name` (base/sft/rl or an eval.extra label) for the three claims; write its predictions to
    `<run_dir>/eval/`."""
    cfg = fitted(cfg, run_dir)  # sft.max_length: auto as the data stage chose it
    rows = imitated(rundir.load_split(run_dir, "test"))  # feedback: scored against the desirable answers
    problem = data_problem(["eval"], cfg.rl.method, kind(rows), list(cfg.rl.rewards), cfg.eval.metrics)
    if problem:  # the data stage's rule, again for a run directory made before the recipe changed
        raise ValueError(f"the test split: {problem}")
    cfg = for_rows(cfg, rows)
    if "preference" in metric_names(cfg) and "rejected" not in rows[0]:
        raise ValueError("eval.metrics names preference, but the test split holds no preference pairs (prompt, "
                         "chosen, rejected); remove it or use preference data")
    if cfg.eval.temperature > 0:
        torch.manual_seed(cfg.seed)
    rundir.remove_eval_files(run_dir, [k for k in rundir.EVAL_FILES if k != "flips"], name)  # an earlier eval's
    model, tokenizer = loader.load(cfg.model, tuned=tuned_path(cfg, Path(run_dir), name), use="generation")
    train = rundir.load_split(run_dir, "train", empty_ok=True)
    cfg = with_lengths(cfg, train + rows, tokenizer)
    if "text" in rows[0]:
        result = evaluate_text(cfg, model, tokenizer, rows, run_dir, name)
    elif metric_names(cfg)[0] == "preference":
        result = _evaluate_pairs(cfg, model, tokenizer, rows, run_dir, name)
    else:
        result = _evaluate_replies(cfg, model, tokenizer, rows, train, run_dir, name)
    return {**result, "max_new_tokens": cfg.eval.max_new_tokens}


def _answered(cfg, model, tokenizer, rows: list[dict], tick) -> tuple[list, list, dict, dict, dict]:
    """The greedy (or eval.temperature) replies to the test prompts, whether each was cut, the scores per example
    and overall (the headline first) and, where eval.metrics names preference, each pair's log-likelihoods."""
    start = time.perf_counter()
    with timing.phase("generation"):
        outputs, cut = _run(cfg, model, tokenizer, rows, tick)
    seconds = time.perf_counter() - start
    per_example, overall = score(cfg, outputs, [acceptable(r) for r in rows], rows)
    extra = {"generate_seconds": round(seconds, 1)}
    if "preference" in metric_names(cfg):
        likelihoods = preference_log_likelihoods(model, tokenizer, rows, cfg.eval.batch_size, cfg.sft.max_length)
        per_example["preference"] = prefers_chosen(likelihoods)
        overall["preference"] = float(np.mean(per_example["preference"]))
        extra["log_likelihood"] = [[round(float(v), 4) for v in pair] for pair in likelihoods]
        per_example = {n: per_example[n] for n in metric_names(cfg) if n in per_example}  # the headline first
        overall = {n: overall[n] for n in metric_names(cfg) if n in overall}
    return outputs, cut, per_example, overall, extra


def _answer_loss(cfg, model, tokenizer, rows: list[dict]) -> dict:
    """eval.answer_loss: the loss and perplexity of the reference answers given their prompts."""
    if not (cfg.eval.answer_loss and "answer" in rows[0]):
        return {}
    losses = answer_losses(model, tokenizer, rows, cfg.eval.batch_size, cfg.sft.max_length)
    loss = float(losses[:, 0].sum() / max(losses[:, 1].sum(), 1))
    return {"answer_loss": loss, "answer_perplexity": math.exp(loss)}


def _margin(cfg, log_likelihoods: list) -> dict:
    """How much likelier a model finds the chosen answers than the rejected ones: the mean margin with its CI."""
    margins = [c - r for c, r in log_likelihoods]
    return {"log_likelihood_margin": {"mean": float(np.mean(margins)),
                                      "ci95": list(bootstrap_ci(margins, seed=cfg.seed))}}


def _evaluate_pairs(cfg, model, tokenizer, rows: list[dict], run_dir, name: str) -> dict:
    """Held-out preference pairs, by `preference` first: how often the model finds the chosen answer likelier, its
    mean margin, and its replies scored against the chosen answer where the recipe says how (`task`, `lenient`).
    Sampling, finishing cut replies, the shifted set and the perturbations measure generation, not preference:
    they are left out."""
    tick = _counter(run_dir, name, len(rows))
    outputs, cut, per_example, overall, extra = _answered(cfg, model, tokenizer, rows, tick)
    write_jsonl(rundir.eval_file(run_dir, "predictions", name),
                _records(rows, outputs, per_example, cut, log_likelihood=extra["log_likelihood"]))
    references = [acceptable(r) for r in rows]
    return {**summary(cfg, per_example, overall, outputs, references, cut),
            "generate_seconds": extra["generate_seconds"], **_margin(cfg, extra["log_likelihood"]),
            **_answer_loss(cfg, model, tokenizer, rows)}


def _evaluate_replies(cfg, model, tokenizer, rows: list[dict], train: list[dict], run_dir, name: str) -> dict:
    """Replies to the test prompts for the three claims: the scores with their intervals (and, where asked, on
    sampled replies and on cut replies given room to finish), how far off numbers are, a classification's
    classes, the shifted set and the perturbed prompts."""
    primary = metric_names(cfg)[0]
    gen_rows = rundir.load_split(run_dir, "generalization") if rundir.has_split(run_dir, "generalization") else []
    subset = rows[:cfg.eval.robustness_size] if cfg.eval.perturbations else []
    sampling = rows[:cfg.eval.sampled_size] if sampled_count(cfg) and name in sampled_models(cfg, run_dir) else []
    tick = _counter(run_dir, name, len(rows) + len(sampling) + len(gen_rows) + len(subset) * len(cfg.eval.perturbations))
    outputs, cut, per_example, overall, extra = _answered(cfg, model, tokenizer, rows, tick)
    references = [acceptable(r) for r in rows]
    sampled, sampled_figures = (_sampled(cfg, model, tokenizer, sampling, references[:len(sampling)], tick)
                                if sampling and primary in per_example else (None, None))
    finishing, finished = (_finished(cfg, model, tokenizer, rows, per_example, cut, run_dir, name)
                           if primary in per_example else (None, {}))
    write_jsonl(rundir.eval_file(run_dir, "predictions", name),
                _records(rows, outputs, per_example, cut, log_likelihood=extra.get("log_likelihood"), sampled=sampled,
                         finished=finished))
    result = {**summary(cfg, per_example, overall, outputs, references, cut),
              "generate_seconds": extra["generate_seconds"], **({"finished": finishing} if finishing else {})}
    error = numeric_error(cfg, outputs, references, [r["prompt"] for r in rows])
    if error:
        result["numeric_error"] = error
    names = classes(train or rows, rows)  # as the data stage found them
    if names:
        result["classes"] = class_figures(cfg, outputs, rows, names)
        if cfg.eval.likeliest_class:
            likelihoods = class_log_likelihoods(model, tokenizer, rows, names, cfg.eval.batch_size, cfg.sft.max_length)
            result["classes"]["likeliest"] = likeliest(likelihoods, rows, names, cfg.seed)
    if sampled_figures:
        result["sampled"] = {**sampled_figures, **(reach(per_example[primary][:len(sampled)], sampled)
                                                   if primary in BINARY else {})}
    if "log_likelihood" in extra:
        result.update(_margin(cfg, extra["log_likelihood"]))
    result.update(_answer_loss(cfg, model, tokenizer, rows))
    if gen_rows:
        result["generalization"] = _generalization(cfg, model, tokenizer, gen_rows, run_dir, name, tick)
    if subset and primary in per_example:
        clean = per_example[primary][:len(subset)]
        if primary in BINARY and not any(clean):
            result["robustness"], result["robustness_skipped"] = {"clean": {"value": 0.0, "n": len(subset)}}, \
                NOTHING_TO_LOSE
            tick(len(subset) * len(cfg.eval.perturbations))  # not generated: the progress counts them done
        else:
            result["robustness"] = _robustness(cfg, model, tokenizer, subset, clean, run_dir, name, tick)
    return result


# A model none of whose replies to the unperturbed prompts is right (pass/fail metrics; a base model that never answers
# in the format, or rambles past the budget) has nothing a perturbation could cost it: its perturbation sets, as many
# replies as the test prompts for the robustness subset's usual 50 x 4, are not generated. On the word problems the
# base model's replies all run to the 48-token limit, and its perturbation sets took about 40 of eval's 400 s.
NOTHING_TO_LOSE = "not perturbed: no reply to the unperturbed prompts was right, so no perturbation could cost anything"


def finish_budget(limit: int) -> int:
    """The room a cut reply gets to finish: twice eval's limit, at least 128 tokens.

    >>> finish_budget(6), finish_budget(200)
    (128, 400)
    """
    return max(128, 2 * limit)


@timing.timed("finishing cut replies")
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


@timing.timed("shifted set")
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


@timing.timed("perturbation sets")
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


@timing.timed("judge")
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
    model, tokenizer = loader.load(cfg.model.model_copy(update={"id": judge_id, "adapter": "none",
                                                                "revision": cfg.model.revision if spec.model == "base"
                                                                else None}), use="generation")
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
    >>> paired, flips = compare_predictions(cfg, p, q, "sft", "rl")
    >>> paired["p_value"], [f["flip"] for f in flips]
    (1.0, ['fail→pass', 'fail→pass', 'pass→fail'])
    """
    first, second = [p["score"] for p in before], [p["score"] for p in after]
    paired, gained, lost = stats.paired(first, second, binary=metric_names(cfg)[0] in BINARY)
    flips = [{"flip": "fail→pass" if gained[i] else "pass→fail", "prompt": b["prompt"], "reference": b["reference"],
              **({"accepted": b["accepted"]} if b.get("accepted") else {}), before_name: b["output"],
              after_name: a["output"]}
             for i, (b, a) in enumerate(zip(before, after)) if gained[i] or lost[i]]
    both = [(b["sampled_score"], a["sampled_score"]) for b, a in zip(before, after)
            if "sampled_score" in b and "sampled_score" in a]  # eval.sampled_models, the first eval.sampled_size
    if both:
        paired["sampled_change"] = stats.sampled_change(*map(list, zip(*both)))
    return paired, flips


