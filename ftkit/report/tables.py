"""What the eval notebook and the report show of an evaluation: the metrics tables, the claims, the comparisons with
the model each tuned one started from, the flips, side-by-side predictions, the classes and the judge, and the
sentences that read them. Reads the run directory or the results eval returns, never a stage module; no torch.
"""

from __future__ import annotations

from pathlib import Path

from ftkit.core import rundir
from ftkit.scoring.classes import NO_CLASS


def metric_name(model_metrics: dict) -> str:
    return model_metrics.get("metric", "accuracy")


def versus_base(model_metrics: dict, base: dict | None) -> str:
    """The change from the base model: accuracy in points, perplexity in percent (lower is better)."""
    name = metric_name(model_metrics)
    if not base or base is model_metrics or name not in base:
        return ""
    if name == "perplexity":
        return f"{100 * (model_metrics[name] / base[name] - 1):+.1f}%"
    return f"{100 * (model_metrics[name] - base[name]):+.1f} points"


def prediction_text(prediction: dict) -> str:
    """A prediction as the comparison tables show it: ✓/✗ and the output (a score between 0 and 1, such as a
    reward or F1, as its value), or the text's perplexity and the model's continuation.

    >>> prediction_text({"output": "68", "score": 1.0}), prediction_text({"output": "A fig.", "score": 0.75})
    ('✓ 68', '0.75 · A fig.')
    """
    if "perplexity" in prediction:
        return f"ppl {prediction['perplexity']:.1f} · {prediction['output']}"
    score = prediction["score"]
    if score is None or score in (0, 1):
        return ("✓ " if score else "✗ ") + prediction["output"]
    return f"{score:.2f} · {prediction['output']}"


def reference_text(record: dict) -> str:
    """A prediction's reference answer as the tables show it, with the other acceptable answers where there are.

    >>> reference_text({"reference": "68"}), reference_text({"reference": "Paris", "accepted": ["Paris", "City of Paris"]})
    ('68', 'Paris (also: City of Paris)')
    """
    others = [a for a in record.get("accepted", []) if a != record["reference"]]
    return record["reference"] + (f" (also: {'; '.join(others)})" if others else "")


def metrics_table(eval_metrics: dict):
    """DataFrame: one row per evaluated model with its metric (accuracy, or perplexity for plain text), 95% CI,
    n, the paired test against the base, and the share of replies cut at eval.max_new_tokens."""
    import pandas as pd

    rows = [{"model": name, metric_name(m): m[metric_name(m)], "ci95_low": m["ci95"][0], "ci95_high": m["ci95"][1],
             "n": m["n"], "vs base": versus_base(m, eval_metrics.get("base")), **paired_columns(m),
             **({"cut at limit": m["cut_at_limit"]} if "cut_at_limit" in m else {}),
             **({sampled_label(m): sampled_text(m["sampled"])} if "sampled" in m else {})}
            for name, m in eval_metrics.items()]
    return pd.DataFrame(rows).set_index("model")


def sampled_label(model_metrics: dict) -> str:
    """The column heading of the sampled accuracy, e.g. "sampled (T=1, 4 per prompt)", with the number of prompts
    where eval.sampled_size took fewer than the test set's.

    >>> sampled_label({"n": 2000, "sampled": {"temperature": 1.0, "k": 4, "n": 1000}})
    'sampled (T=1, 4 per prompt, first 1000 prompts)'
    """
    figures = model_metrics["sampled"]
    fewer = figures.get("n", 0) < model_metrics.get("n", 0)
    return (f"sampled (T={figures['temperature']:g}, {figures['k']} per prompt"
            + (f", first {figures['n']} prompts)" if fewer else ")"))


def sampled_text(figures: dict) -> str:
    """A sampled accuracy (or its change) with its 95% interval.

    >>> sampled_text({"value": 0.7194, "ci95": [0.66, 0.77]})
    '0.719 [0.660, 0.770]'
    >>> sampled_text({"value": 0.049, "ci95": [0.027, 0.072], "p_value": 2e-05})
    '+0.049 [+0.027, +0.072], p 2e-05'
    """
    lo, hi = figures["ci95"]
    if "p_value" in figures:
        return f"{figures['value']:+.3f} [{lo:+.3f}, {hi:+.3f}], p {figures['p_value']:.2g}"
    return f"{figures['value']:.3f} [{lo:.3f}, {hi:.3f}]"


def sharpening_note(results: dict) -> str | None:
    """When RL's greedy answers did not change significantly against the model it started from but its sampled
    accuracy rose (the interval above 0), a sentence saying what RL did: it made the answers the model already gave
    most of the time more likely, which shows when sampling, not in the greedy reply. None otherwise."""
    for name, other, paired in start_comparisons(results):
        change = paired.get("sampled_change")
        if change and paired["p_value"] >= 0.05 and change["ci95"][0] > 0:
            return (f"{name} against {other}: greedy answers changed within chance ({paired['fail_to_pass']} "
                    f"gained, {paired['pass_to_fail']} lost, p {paired['p_value']:.2g}) while the sampled "
                    f"accuracy rose by {100 * change['value']:.1f} points [{100 * change['ci95'][0]:.1f}, "
                    f"{100 * change['ci95'][1]:.1f}]. RL made the answers {other} already gave most of the time "
                    "more likely (it sharpened the distribution it samples from) rather than changing the most "
                    "likely answer on the questions it got wrong. Greedy accuracy moves when that answer "
                    "changes: where demonstrations exist for every prompt, more SFT steps do it faster; RL pays "
                    "where the reward says more than the demonstrations (docs/guides/rl.md: When RL pays).")
    return None


def reach_note(results: dict) -> str | None:
    """For each tuned model's start model (RL's SFT model), how many of its greedy mistakes it ever got right when
    sampling: what GRPO or RLOO could reinforce from its own samples. None when eval did not sample.

    >>> reach_note({"sft": {"sampled": {"greedy_wrong": 39, "wrong_with_a_right_sample": 25, "k": 8,
    ...                                 "temperature": 1.0}}, "rl": {"vs_sft": {}}})
    'Of the 39 test prompts sft answered wrong greedily, 25 drew a right answer among 8 samples at temperature 1: those are the mistakes a sampling RL method can reinforce a right answer for; on the other 14 its samples never found one, so they carried no reward to learn from.'
    """
    for _, other, _ in start_comparisons(results):
        figures = results[other].get("sampled") or {}
        if "greedy_wrong" in figures:
            wrong, right = figures["greedy_wrong"], figures["wrong_with_a_right_sample"]
            return (f"Of the {wrong} test prompts {other} answered wrong greedily, {right} drew a right answer among "
                    f"{figures['k']} samples at temperature {figures['temperature']:g}: those are the mistakes a "
                    f"sampling RL method can reinforce a right answer for; on the other {wrong - right} its samples "
                    "never found one, so they carried no reward to learn from.")
    return None


def paired_columns(model_metrics: dict) -> dict:
    """The paired test against the base model as table columns: p-value and flips each way (empty for the base)."""
    paired = model_metrics.get("vs_base")
    if not paired:
        return {"p (paired)": None, "fail→pass": None, "pass→fail": None}
    return {"p (paired)": f"{paired['p_value']:.2g}", "fail→pass": paired["fail_to_pass"],
            "pass→fail": paired["pass_to_fail"]}


def error_text(figures: dict) -> str:
    """A numeric error summary in a cell (lower is better).

    >>> error_text({"median": 10.0, "mean": 12.37, "ci95": [9.0, 15.5], "with_a_number": 0.985, "n": 197})
    '10 · 12.4 [9, 15.5] · 98.5%'
    >>> error_text({"with_a_number": 0.0, "n": 0})
    'no reply gave a number'
    >>> error_text({"median": 2.0, "mean": 3.0, "ci95": [1.0, 5.0], "with_a_number": 0.4, "n": 80, "echoes": 120})
    '2 · 3 [1, 5] · 40% (120 more echo the question)'
    """
    echoes = f" ({figures['echoes']} more echo the question)" if figures.get("echoes") else ""
    if not figures["n"]:
        return "no reply gave a number" + echoes
    lo, hi = figures["ci95"]
    return (f"{figures['median']:.3g} · {figures['mean']:.3g} [{lo:.3g}, {hi:.3g}] · "
            f"{100 * figures['with_a_number']:.3g}%{echoes}")


def all_metrics_table(eval_metrics: dict):
    """DataFrame: every metric of every model (with its 95% CI where it has per-example scores), the loss and
    perplexity on the reference answers and, for numeric answers, how far off the numbers are."""
    import pandas as pd

    table = {}
    for name, m in eval_metrics.items():
        row = {}
        for metric, figures in m.get("metrics", {}).items():
            ci = figures.get("ci95")
            row[metric] = f"{figures['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        for key in ("answer_loss", "answer_perplexity", "perplexity"):
            if key in m:
                row[key] = round(m[key], 3)
        if "numeric_error" in m:
            row["numeric |error|: median · mean [95% CI] · replies with a number"] = error_text(m["numeric_error"])
        if "log_likelihood_margin" in m:
            margin = m["log_likelihood_margin"]
            row["log-likelihood margin (chosen - rejected)"] = (f"{margin['mean']:.3f} [{margin['ci95'][0]:.3f}, "
                                                                f"{margin['ci95'][1]:.3f}]")
        if "implicit_reward" in m:
            implicit = m["implicit_reward"]
            row[f"DPO implicit reward margin vs {implicit['reference']} (beta {implicit['beta']})"] = (
                f"{implicit['margin']:.3f} [{implicit['ci95'][0]:.3f}, {implicit['ci95'][1]:.3f}], "
                f"above 0 on {implicit['accuracy']:.0%}")
        table[name] = row
    return pd.DataFrame(table).T


def class_summary(results: dict):
    """For a classification (a few answers, each repeated; `eval.class_figures`): per model, macro-F1 over the
    classes, the share of replies that give none of them, and how often the class it finds likeliest as its whole
    reply is right (`eval.likeliest`; a DataFrame; empty otherwise)."""
    import pandas as pd

    def likeliest(figures):
        lo, hi = figures["ci95"]
        return f"{figures['value']:.3f} [{lo:.3f}, {hi:.3f}]"

    def picks(figures):
        return " · ".join(f"{n} {k}" for n, k in figures["picked"].items())

    return pd.DataFrame({name: {"macro-F1": m["classes"]["macro_f1"], "replies giving no class": m["classes"]["no_class"],
                                **({"likeliest class right [95% CI]": likeliest(m["classes"]["likeliest"]),
                                    "likeliest class picked": picks(m["classes"]["likeliest"]),
                                    **({"calibrated [95% CI]": likeliest(m["classes"]["likeliest"]["calibrated"]),
                                        "calibrated picked": picks(m["classes"]["likeliest"]["calibrated"])}
                                       if "calibrated" in m["classes"]["likeliest"] else {})}
                                   if "likeliest" in m["classes"] else {})}
                         for name, m in results.items() if "classes" in m}).T


def confusion(model_metrics: dict):
    """A classification's confusion matrix for one model: a row per reference class, a column per class its replies
    gave, then the replies that gave none (a DataFrame of counts)."""
    import pandas as pd

    figures = model_metrics["classes"]
    return pd.DataFrame(figures["confusion"], index=[f"reference: {n}" for n in figures["names"]],
                        columns=[*figures["names"], NO_CLASS])


def cut_note(results: dict) -> str | None:
    """Which models' replies were cut at eval.max_new_tokens before they ended, and what the cut hid: the first
    cut replies answered again with room to finish (eval.finish_cut; `finished_table` has every metric). None when
    no reply was cut.

    >>> print(cut_note({"base": {"cut_at_limit": 1.0, "max_new_tokens": 6, "metric": "accuracy",
    ...     "finished": {"n": 50, "cut": 200, "max_new_tokens": 128, "still_cut": 20,
    ...                  "metrics": {"task": {"cut": 0.0, "finished": 0.02}, "lenient": {"cut": 0.0, "finished": 0.18}}}},
    ...     "sft": {"cut_at_limit": 0.0, "max_new_tokens": 6}}))
    Replies cut at eval.max_new_tokens = 6 before they ended: base 100%. A cut reply is scored as it stands. Given room to finish (128 tokens), 50 of base's 200 cut replies score task 0.0% → 2.0%, lenient 0.0% → 18.0% (20 still cut).
    """
    cut = {name: m["cut_at_limit"] for name, m in results.items() if m.get("cut_at_limit")}
    if not cut:
        return None
    limit = next((m["max_new_tokens"] for m in results.values() if "max_new_tokens" in m), None)
    parts = [f"Replies cut at eval.max_new_tokens{f' = {limit}' if limit else ''} before they ended: "
             + ", ".join(f"{name} {share:.0%}" for name, share in cut.items()) + ". A cut reply is scored as it stands."]
    for name in cut:
        finished = results[name].get("finished")
        if finished:
            changes = ", ".join(f"{metric} {100 * v['cut']:.1f}% → {100 * v['finished']:.1f}%"
                                for metric, v in finished["metrics"].items())
            parts.append(f"Given room to finish ({finished['max_new_tokens']} tokens), {finished['n']} of {name}'s "
                         f"{finished['cut']} cut replies score {changes} ({finished['still_cut']} still cut).")
    return " ".join(parts)


def finished_table(results: dict):
    """Per model with cut replies answered again (eval.finish_cut): how many, the two budgets, each metric on them as
    cut and as finished, and how many are still cut (a DataFrame; empty when none was)."""
    import pandas as pd

    rows = [{"model": name, "re-answered": f"{f['n']} of {f['cut']} cut",
             "tokens": f"{m.get('max_new_tokens')} → {f['max_new_tokens']}",
             **{f"{metric} (cut → finished)": f"{100 * v['cut']:.1f}% → {100 * v['finished']:.1f}%"
                for metric, v in f["metrics"].items()}, "still cut": f["still_cut"]}
            for name, m in results.items() if (f := m.get("finished"))]
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def versus_start(results: dict):
    """Each tuned model against the tuned model it started from (RL against SFT): the headline metric's change, the
    paired test, the flips each way and, with eval.sampled, the change in sampled accuracy (a DataFrame; empty when
    no model started from another)."""
    import pandas as pd

    rows = []
    for name, other, paired in start_comparisons(results):
        metric = metric_name(results[name])
        rows.append({"model": name, "against": other,
                     f"{metric} change": f"{100 * (results[name][metric] - results[other][metric]):+.1f} points",
                     "p (paired)": f"{paired['p_value']:.2g}", "fail→pass": paired["fail_to_pass"],
                     "pass→fail": paired["pass_to_fail"],
                     **({"sampled change [95% CI], p": sampled_text(paired["sampled_change"])}
                        if "sampled_change" in paired else {})})
    return pd.DataFrame(rows)


def start_comparisons(results: dict):
    """(model, the model it started from, their paired comparison) for each tuned model evaluated with its start
    model (RL against SFT); comparisons against the base are left out.

    >>> list(start_comparisons({"sft": {"vs_base": {}}, "rl": {"vs_base": {}, "vs_sft": {"p_value": 0.5}}}))
    [('rl', 'sft', {'p_value': 0.5})]
    """
    for name, m in results.items():
        for key, paired in m.items():
            other = key.removeprefix("vs_")
            if key.startswith("vs_") and other != "base" and other in results:
                yield name, other, paired


def change_text(figures: dict) -> str | float:
    """A robustness change with its 95% paired interval, e.g. "-0.320 [-0.460, -0.180]" (older runs: the number).

    >>> change_text({"change": -0.32, "change_ci95": [-0.46, -0.18]})
    '-0.320 [-0.460, -0.180]'
    """
    ci = figures.get("change_ci95")
    return f"{figures['change']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else figures["change"]


def claims(results: dict):
    """The three claims side by side, one row per model: the headline metric on the test set, on the shifted set
    (and how far off its numbers are, for numeric answers), and its change under each perturbation (a DataFrame)."""
    import pandas as pd

    table = {}
    for name, m in results.items():
        row = {f"{metric_name(m)} (test)": m.get(metric_name(m))}
        if "generalization" in m:
            row["generalization"] = m["generalization"]["value"]
            if "numeric_error" in m["generalization"]:
                row["generalization: numeric |error| median · mean [95% CI] · with a number"] = error_text(
                    m["generalization"]["numeric_error"])
        for kind, figures in m.get("robustness", {}).items():
            if kind != "clean":
                row[f"robustness: {kind} (change)"] = change_text(figures)
        table[name] = row
    return pd.DataFrame(table).T


def flips(run_dir: str | Path, name: str, limit: int = 20):
    """The test examples where `name` and the base model disagree on pass/fail (a DataFrame)."""
    import pandas as pd

    return pd.DataFrame(rundir.eval_records(run_dir, "flips", name)[:limit])


def side_by_side(run_dir: str | Path, names: list[str], limit: int = 10):
    """Every model's output on the first `limit` test prompts, side by side (a DataFrame)."""
    import pandas as pd

    predictions = {n: rundir.load_predictions(run_dir, n)[:limit] for n in names}
    first = predictions[names[0]]
    frame = pd.DataFrame({"prompt": [p["prompt"] for p in first], "reference": [reference_text(p) for p in first]})
    if not any(frame["reference"]):  # prompts without answers
        frame = frame.drop(columns="reference")
    for name in names:
        frame[name] = [prediction_text(p) for p in predictions[name]]
    return frame


def judge_table(results: dict):
    """The judge's summary per model (eval.judge): pairwise win/tie/loss and win rate (ties count half) with its 95%
    interval, verdicts that flipped with the order; or the mean grade. Empty without a judge."""
    import pandas as pd

    rows = []
    for name, m in results.items():
        verdict = m.get("judge")
        if not verdict:
            continue
        ci = verdict.get("ci95") or [None, None]
        head = ({"against": verdict["against"], "win": verdict["win"], "tie": verdict["tie"], "loss": verdict["loss"],
                 "win rate": verdict["win_rate"], "order flipped": verdict["order_flipped"]}
                if verdict["mode"] == "pairwise" else {"mean grade (1-5)": verdict["mean_grade"]})
        rows.append({"model": name, "judge": verdict["judge"], **head, "ci95_low": ci[0], "ci95_high": ci[1],
                     "n": verdict["n"], "unreadable": verdict["unreadable"]})
    return pd.DataFrame(rows).set_index("model") if rows else pd.DataFrame()


def judge_verdicts(run_dir, name: str, limit: int = 5):
    """The judge's raw replies on the first examples of model `name`, with what the parser read in them."""
    import pandas as pd

    records = rundir.eval_records(run_dir, "judge", name)[:limit]
    return pd.DataFrame([{"prompt": r["prompt"], name: r["candidate"], "other": r.get("other"),
                          "verdicts (as A, as B)": r["verdicts"], "read": r.get("parsed", r.get("grade")),
                          "outcome": r.get("outcome", r.get("grade"))} for r in records])


def judge_prompt(results: dict) -> str:
    """The judge's prompt template with its rubric ("" without a judge)."""
    verdict = next((m["judge"] for m in results.values() if m.get("judge")), None)
    if not verdict:
        return ""
    fill = {"rubric": verdict["rubric"], "prompt": "{prompt}"}
    fill.update({"a": "{reply A}", "b": "{reply B}"} if verdict["mode"] == "pairwise" else {"reply": "{reply}"})
    return verdict["prompt"].format(**fill)
