"""The self-contained `report.html` of a run, from the files in its run directory.

One HTML file with no external references and no script: a summary first (stages, data, training, metrics of every
model with the three claims, curves, RL samples, example predictions), then the resolved recipe, the environment and
each stage's executed notebook rendered by nbconvert with its code folded. Every piece of text that comes from data
or a model is escaped. It reads the run directory only (`ftkit.core.rundir`): re-rendering imports no torch, TRL or stage
module.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftkit.core import rundir, timing
from ftkit.core.io import read_json, redact, write_atomic
from ftkit.core.machine import describe_cpu
from ftkit.report.display import (
    commonest_note,
    plan_rows,
    plot_losses,
    plot_phases,
    plot_rl,
    signal_warning,
    teacher_note,
)
from ftkit.report.exported import export_section
from ftkit.report.markup import CSS, code_css, esc, fmt, html_table, notebook_html, png
from ftkit.report.tables import (
    all_metrics_table,
    claims,
    class_summary,
    confusion,
    cut_note,
    finished_table,
    judge_prompt,
    judge_table,
    metric_name,
    paired_columns,
    prediction_text,
    reach_note,
    reference_text,
    sampled_label,
    sampled_text,
    sharpening_note,
    versus_base,
    versus_start,
)


def _settings(settings: dict | None) -> str:
    """Speed settings in a few words: "bfloat16 weights, bfloat16 compute, padded, checkpointing off"."""
    if not settings:
        return ""
    return (f"{settings.get('weights', '?')} weights, {settings['dtype']} compute, "
            f"{'padding-free' if settings['padding_free'] else 'padded'}, "
            f"checkpointing {'on' if settings['gradient_checkpointing'] else 'off'}")


def machine_line(env: dict) -> str:
    """Where the run ran, in one line: the GPU, or the CPU with the flags that decide bfloat16 speed."""
    cpu = env.get("cpu")
    where = describe_cpu(cpu) if cpu else env.get("processor", "")
    return f"GPU {env['gpu']}; CPU {where}" if env.get("gpu") else f"CPU {where}"


def _header(recipe: dict, status: dict, metrics: dict, env: dict) -> str:
    """Failed stages first, then the model, data, seed and machine."""
    parts = []
    for stage, info in status.items():
        if rundir.stage_state(info) == "failed":
            parts.append(f'<div class="failed"><b>Stage {esc(stage)} failed:</b> {esc(info.get("error"))}<br>Open the '
                         f'executed notebook <code>{esc(info.get("notebook"))}</code> for the traceback.</div>')
    source = metrics.get("data", {}).get("source") or recipe.get("data", {}).get("task")
    parts.append(f"<p><b>Model:</b> {esc(recipe.get('model', {}).get('id'))} &nbsp; <b>Data:</b> {esc(source)} &nbsp; "
                 f"<b>Seed:</b> {esc(recipe.get('seed'))}</p><p><b>Machine:</b> {esc(machine_line(env))}</p>"
                 + (f"<p><b>Model terms:</b> {esc(env['model_terms'])}</p>" if env.get("model_terms") else "")
                 + _dtype_line(env.get("dtype_auto")))
    return "".join(parts)


def _dtype_line(auto: dict | None) -> str:
    """What `model.dtype: auto` gave on this machine for training and for generation, and why.

    >>> auto = {"training": {"dtype": "bfloat16", "reason": "<AMX>"}, "generation": {"dtype": "float32", "reason": "r"}}
    >>> _dtype_line(auto)
    '<p><b>dtype auto:</b> training in bfloat16 (&lt;AMX&gt;); generation in float32 (r)</p>'
    """
    if not auto:
        return ""
    uses = [f"{use} in {auto[use]['dtype']} ({auto[use]['reason']})" for use in ("training", "generation")
            if use in auto]
    return f"<p><b>dtype auto:</b> {esc('; '.join(uses))}</p>"


def _stages(status: dict, phases: dict) -> str:
    """Each stage's state and seconds, its largest phases, and the phases of every stage as stacked bars."""
    rows = []
    for stage, info in status.items():
        state = rundir.stage_state(info)
        note = info.get("error") or ""
        if state == "interrupted":
            note = f"the process running it stopped (killed?) after {info.get('start')}; `ftkit resume` continues it"
        elif state == "done" and info.get("reused"):
            note = f"unchanged, reused on {info['reused']} (ran {info.get('start')})"
        rows.append(f'<tr><td>{esc(stage)}</td><td class="state-{esc(state.replace(" ", "-"))}">'
                    f'{esc(state)}</td><td>{esc(fmt(info.get("duration_s"), 1))}</td>'
                    f'<td>{esc(largest_text(phases.get(stage, {})))}</td><td>{esc(note)}</td></tr>')
    bars = plot_phases({stage: phases[stage] for stage in status if stage in phases})
    return ("<h3>Stages</h3><table><thead><tr><th>stage</th><th>state</th><th>seconds</th><th>most time</th>"
            f"<th>error</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + (f'<div id="phases">{png(bars)}</div>' if bars else ""))


def largest_text(phases: dict) -> str:
    """A stage's three largest phases with their seconds.

    >>> largest_text({"loading": 2.0, "update": 30.4, "saving": 1.0, "imports": 4.2})
    'update 30 s, imports 4 s, loading 2 s'
    """
    return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timing.largest(phases))


def _template_note(overlap: dict) -> str:
    """The contamination check's template wording, left out of its count (`ftkit.sources.leakage.common_grams`)."""
    n = overlap.get("common_ngrams")
    if not n:
        return ""
    return (f" Not counted as overlap: wording a tenth of the prompts repeat (a template's), {esc(n)} "
            f"8-gram{'s' if n != 1 else ''} such as &ldquo;{esc(overlap.get('common_example'))}&rdquo;")


def _data(data: dict) -> str:
    if not data.get("splits"):
        return ""
    shown = {name: s for name, s in data["splits"].items() if not (data.get("evaluate_only") and name == "train")}
    rows = [[name, s["examples"], s.get("tokens_p50", ""), s.get("tokens_p90", ""), s.get("tokens_max", "")]
            for name, s in shown.items()]
    drops = ", ".join(f"{k}: {v}" for k, v in data.get("drops", {}).items()) or "none"
    overlap = data.get("contamination", {})
    template = {"ftkit's default": "ftkit's default (BOS, then ### User: / ### Assistant: headers, EOS after each "
                                   "turn: the model has none of its own)", "the model's own": "the model's own"}.get(
        data.get("chat_template"))
    text = (f"<h3>Data</h3><p>Source: {esc(data.get('source'))}. Dropped: {esc(drops)}. "
            + (f"Chat template: {esc(template)}. " if template else "")
            + ("Evaluation only (data.test_size: all): every example is a test example, in the sources' order, "
               "and nothing is trained.</p>" if data.get("evaluate_only") else
               f"Test prompts also in train: {esc(overlap.get('ngram_overlaps'))} "
               f"({esc(overlap.get('exact_matches'))} exact).{_template_note(overlap)}</p>")
            + html_table(["split", "examples", "tokens p50", "tokens p90", "tokens max"], rows))
    for warning in data.get("warnings", []):
        text += f'<p class="warning">{esc(warning)}</p>'
    if data.get("teacher_errors"):
        text += f'<p class="warning">{esc(teacher_note(data))}</p>'
    if data.get("split_by"):
        text += f"<p>Split by {esc(data['split_by'])}: examples of one group are all on one side.</p>"
    if data.get("several_acceptable_answers"):
        counts = ", ".join(f"{n} in {split}" for split, n in data["several_acceptable_answers"].items() if n)
        text += (f"<p>Examples with several acceptable answers: {esc(counts)}; SFT learns the first, and a reply "
                 "giving any of them counts as right (eval and the built-in rewards).</p>")
    if data.get("classes"):
        found = data["classes"]
        rows = [[split, *(counts[n] for n in found["names"])] for split, counts in found["counts"].items()
                if split in shown]
        text += ("<p>A classification: the answers take a few values, each repeated. Examples per class:</p>"
                 + html_table(["split", *found["names"]], rows))
    if data.get("augmented"):
        added = ", ".join(f"{n} {kind}" for kind, n in data["augmented"].items())
        text += f"<p>Robustness training (data.augment): train holds perturbed copies of its prompts: {esc(added)}.</p>"
    if overlap.get("pairs"):
        rows = [[p["test"], p["train"], p["shared"]] for p in overlap["pairs"]]
        text += "<p>Overlapping test and train prompts, first ones:</p>" + html_table(["test", "train", "shared"], rows)
    if data.get("mix"):
        rows = [[name, m["weight"], m["available"], m["wanted"], m["taken"]] for name, m in data["mix"].items()]
        text += "<p>Mixed sources (data.mix):</p>" + html_table(["source", "weight", "available", "wanted", "taken"], rows)
    return text


def _training(metrics: dict) -> str:
    trained = {stage: metrics[stage] for stage in ("sft", "rl") if metrics.get(stage, {}).get("steps")}
    if not trained:
        return ""
    rows = [[stage, m["steps"], m.get("epochs", ""), _processes(m), m.get("trainable_parameters"),
             m.get("train_seconds"), m.get("real_tokens", ""), m.get("real_tokens_per_second", ""),
             m.get("resumed_from_step") or "", _settings(m.get("settings"))] for stage, m in trained.items()]
    plans = "".join(f"<p>The {stage} plan: what ftkit chose, and why.</p>"
                    + html_table(["setting", "value", "why"], plan_rows(m["plan"]))
                    for stage, m in trained.items() if m.get("plan"))
    return "<h3>Training</h3>" + html_table(["stage", "steps", "epochs", "processes", "trained parameters", "seconds",
                                         "real tokens", "real tokens/s", "resumed from step", "settings"], rows) + plans


# accelerate's distributed types as the report names them
HOW = {"FSDP": "FSDP2", "DEEPSPEED": "DeepSpeed", "MULTI_CPU": "data parallel", "MULTI_GPU": "data parallel"}


def _processes(figures: dict) -> str:
    """How many processes trained and how (data parallel, FSDP2, DeepSpeed), with the largest share of the parameters
    one held while training.

    >>> _processes({"processes": 2, "distributed": "FSDP", "rank_parameters": {"loaded": [80, 0], "trained": [40, 41]}})
    '2 (FSDP2; one held at most 51% of the parameters)'
    >>> _processes({"processes": 1, "distributed": "NO"})
    '1'
    """
    count = figures.get("processes", 1)
    held = figures.get("rank_parameters")
    if count == 1 or not held:
        return str(count)
    share = max(held["trained"]) / max(max(held["loaded"]), 1)
    how = HOW.get(figures.get("distributed"), figures.get("distributed", "?"))
    return f"{count} ({how}; one held at most {share:.0%} of the parameters)"


def _rl(rl: dict, recipe_rl: dict) -> str:
    """How much learning signal RL's steps carried, where its time went, which prompts it skipped, and a warning
    when it could not learn."""
    signal = rl.get("signal")
    if not signal:
        return ""
    rows = [["prompts per step", rl.get("prompts_per_step", "")],
            ["prompts with no reward spread, per step (mean)", fmt(signal.get("zero_spread_share"), 2)],
            ["steps where most prompts / every prompt had no spread",
             f"{signal['steps_mostly_without_signal']} / {signal.get('steps_without_signal', '?')} of "
             f"{signal['logged_steps']} logged"],
            ["completions cut at max_completion_length", fmt(signal.get("clipped_share"), 2)],
            ["seconds per step generating / updating", f"{fmt(signal.get('generation_seconds_per_step'), 2)} / "
                                                       f"{fmt(signal.get('update_seconds_per_step'), 2)}"]]
    kept = rl.get("prompt_filter")
    if kept:
        skipped = ", ".join(f"{n} {v}" if v == "mostly solved" else f"{n} all scored {v}"
                            for v, n in kept["no_spread"].items()) or "none"
        rows.append(["prompts kept by rl.filter_prompts", f"{kept['kept']} of {kept['pool']} "
                     f"({kept['samples_per_prompt']} samples each; skipped: {skipped}; {kept['seconds']} s)"])
    warning = signal_warning(rl, recipe_rl)
    return ("<h3>RL: learning signal</h3>" + html_table(["measure", "value"], rows)
            + (f'<p class="warning"><b>RL had little to learn from.</b> {esc(warning)}</p>' if warning else ""))


def _evaluation(run_dir: Path, evaluated: dict, data: dict | None = None) -> str:
    """1 · the headline metric with its interval and paired test, each tuned model against the one it started from,
    every metric, for a classification its classes, the replies cut at the length limit, 2 and 3 · the claims, the
    flips."""
    if not evaluated:
        return ""
    metric = metric_name(next(iter(evaluated.values())))
    sampled = [m for m in evaluated.values() if "sampled" in m]
    rows = [[name, fmt(m[metric]), f"[{fmt(m['ci95'][0])}, {fmt(m['ci95'][1])}]", m["n"],
             versus_base(m, evaluated.get("base"))] + [fmt(v) for v in paired_columns(m).values()]
            + ([sampled_text(m["sampled"]) if "sampled" in m else ""] if sampled else [])
            for name, m in evaluated.items()]
    parts = ['<h3>1 · Task performance (held-out test set)</h3><div id="metrics">'
             + html_table(["model", metric, "95% CI (bootstrap)", "n", "vs base", "p (paired test)", "fail→pass",
                       "pass→fail"] + ([f"{sampled_label(sampled[0])} [95% CI]"] if sampled else []), rows)
             + "</div>", _versus_start(evaluated)]
    others = all_metrics_table(evaluated)
    if len(others.columns) > 1:
        parts.append("<p>Every metric (95% CI) and the loss on the reference answers:</p>"
                     + html_table(["model", *others.columns], [[n, *(fmt(v) for v in r)]
                                                           for n, r in zip(others.index, others.values)]))
    parts.append(_classes(evaluated, data or {}))
    note = cut_note(evaluated)
    if note:
        finished = finished_table(evaluated)
        parts.append(f'<p class="warning">{esc(note)} Raise eval.max_new_tokens if the format needs more; a model '
                     "that finds the answer only given more room explains before it answers.</p>"
                     + (html_table(["model", *finished.columns], [[n, *r] for n, r in zip(finished.index,
                                                                                      finished.values.tolist())])
                        if not finished.empty else "") + _finished_examples(run_dir, evaluated))
    parts.append(_judge(run_dir, evaluated))
    parts.append(_claims(evaluated))
    parts.append(_flips(run_dir, evaluated))
    return "".join(parts)


def _classes(evaluated: dict, data: dict) -> str:
    """A classification's classes: the baseline of the commonest class, macro-F1 per model, and each model's
    confusion matrix."""
    summary = class_summary(evaluated)
    if summary.empty:
        return ""
    note = commonest_note(data)
    likely = (" The likeliest class is the one the model gives the highest likelihood as its whole reply: what it "
              "knows, whatever it writes; calibrated, each class's probability is first divided by its mean over the "
              "test prompts, which takes out a preference for one name or position that holds whatever the prompt "
              "(batch calibration; the answers are not used)." if any("likeliest" in m.get("classes", {}) for m in evaluated.values())
              else "")
    parts = [f"<h4>Classes</h4><p>{esc(note or '')} A reply counts as the first class it gives as the task reads an "
             f"answer; one that gives none is counted apart.{likely}</p>",
             html_table(["model", *summary.columns], [[n, *(fmt(v) for v in r)] for n, r in zip(summary.index,
                                                                                             summary.values)])]
    for name, m in evaluated.items():
        if "classes" in m:
            matrix = confusion(m)
            parts.append(f"<p>{esc(name)}: reference class (rows) against the class given (columns)</p>"
                         + html_table(["", *matrix.columns], [[i, *r] for i, r in zip(matrix.index, matrix.values.tolist())]))
    return "".join(parts)


def _judge(run_dir: Path, evaluated: dict, limit: int = 3) -> str:
    """eval.judge: the summary per model, the judge's prompt, and its first raw verdicts."""
    table = judge_table(evaluated)
    if table.empty:
        return ""
    rows = [[name, *(fmt(v) for v in values)] for name, values in zip(table.index, table.values)]
    verdicts = []
    for name in table.index:
        for record in rundir.eval_records(run_dir, "judge", name)[:limit]:
            verdicts.append([name, record["prompt"], record["candidate"], record.get("other", ""),
                             " | ".join(record["verdicts"]), record.get("outcome", record.get("grade"))])
    return ("<h3>A judge's verdicts (eval.judge)</h3><p>Pairwise verdicts were asked in both orders; a verdict that "
            "followed the position counts as a tie (order flipped). Unreadable verdicts are counted, not scored.</p>"
            + html_table(["model", *table.columns], rows) + f"<p>The judge's prompt:</p><pre>{esc(judge_prompt(evaluated))}"
            "</pre><p>First verdicts:</p>" + html_table(["model", "prompt", "reply", "against", "raw verdicts",
                                                     "outcome"], verdicts))


def _versus_start(evaluated: dict) -> str:
    """RL against the SFT model it started from: the gain, the paired test and the flips each way."""
    table = versus_start(evaluated)
    if table.empty:
        return ""
    note, reached = sharpening_note(evaluated), reach_note(evaluated)
    return ("<p>Each tuned model against the one it started from (same examples, same paired test):</p>"
            + html_table(list(table.columns), table.values.tolist())
            + (f"<p>{esc(reached)}</p>" if reached else "")
            + (f'<p class="warning">{esc(note)}</p>' if note else ""))


def _curves(run_dir: Path) -> str:
    plots = []
    if rundir.log_history(run_dir, "sft"):
        plots.append(png(plot_losses(run_dir)))
    if rundir.log_history(run_dir, "rl"):
        plots.append(png(plot_rl(run_dir)))
    return "<h3>Training</h3>" + "".join(plots) if plots else ""


def _summary(run_dir: Path, recipe: dict, status: dict, metrics: dict, env: dict) -> str:
    evaluated = metrics.get("eval", {})
    return "\n".join([_header(recipe, status, metrics, env), _stages(status, rundir.phases(run_dir)),
                      _data(metrics.get("data", {})),
                      _training(metrics), _rl(metrics.get("rl", {}), recipe.get("rl", {})),
                      _evaluation(run_dir, evaluated, metrics.get("data", {})), export_section(metrics.get("export", {})),
                      _curves(run_dir), _rl_samples(run_dir), _examples(run_dir, list(evaluated))])


def _claims(evaluated: dict) -> str:
    table = claims(evaluated)
    if len(table.columns) < 2:
        return ""
    first = next(iter(evaluated.values()))
    shifted = first.get("generalization", {})
    perturbed = first.get("robustness", {}).get("clean", {})
    rows = [[name, *(fmt(v) for v in values)] for name, values in zip(table.index, table.values)]
    generalization = (f"Generalization: the headline metric on a related but shifted test set ({esc(shifted['n'])} "
                      "examples). " if shifted.get("n") else "")
    return ("<h3>2 · Generalization and 3 · Robustness</h3>"
            f"<p>{generalization}Robustness: its change on the first {esc(perturbed.get('n', 0))} test prompts under "
            "each perturbation, with its 95% paired bootstrap interval (negative: worse than on the unperturbed "
            "prompts).</p>"
            + html_table(["model", *table.columns], rows)
            + "".join(f"<p>{esc(name)}: {esc(m['robustness_skipped'])}.</p>" for name, m in evaluated.items()
                      if m.get("robustness_skipped")))


def _flips(run_dir: Path, evaluated: dict, limit: int = 8) -> str:
    """The flips of each comparison this eval made (its results record the paired test)."""
    parts = []
    for name, results in evaluated.items():
        for other, file in (("base", name), ("sft", f"{name}_vs_sft")):
            records = rundir.eval_records(run_dir, "flips", file) if f"vs_{other}" in results else []
            if records:
                references = ["reference"] if any(r["reference"] for r in records) else []
                rows = [[r["flip"], r["prompt"]] + [reference_text(r) for _ in references] + [r[other], r[name]]
                        for r in records[:limit]]
                parts.append(f"<p>{esc(name)} against {other}: {len(records)} examples flipped (first {len(rows)}):"
                             "</p>" + html_table(["flip", "prompt", *references, other, name], rows))
    return "".join(parts)


def _finished_examples(run_dir: Path, evaluated: dict, limit: int = 3) -> str:
    """The first cut replies of each model beside the same replies given room to finish."""
    parts = []
    for name, results in evaluated.items():
        records = [r for r in rundir.eval_records(run_dir, "predictions", name) if "finished" in r][:limit]
        if records and results.get("finished"):
            parts.append(f"<p>{esc(name)}: cut replies and the same prompts given room to finish (first "
                         f"{len(records)}):</p>" + html_table(["prompt", "reference", "cut reply", "finished"],
                                                          [[r["prompt"], reference_text(r), r["output"],
                                                            r["finished"]] for r in records]))
    return "".join(parts)


def _rl_samples(run_dir: Path) -> str:
    records = rundir.rl_samples(run_dir)
    if not records:
        return ""
    names = [k for k in records[0] if k not in ("step", "prompt", "completion")]
    rows = [[r["step"], r["prompt"], r["completion"]] + [fmt(r.get(n)) for n in names] for r in records]
    return ("<h3>RL samples</h3><p>Completions sampled during RL, with each reward (total: weighted sum).</p>"
            + html_table(["step", "prompt", "completion"] + names, rows))


def _examples(run_dir: Path, names: list[str], limit: int = 12) -> str:
    predictions = {n: rundir.eval_records(run_dir, "predictions", n)[:limit] for n in names}
    predictions = {n: p for n, p in predictions.items() if p}
    if not predictions:
        return ""
    first = next(iter(predictions.values()))
    references = ["reference"] if any(p["reference"] for p in first) else []  # none: prompts without answers
    rows = [[p["prompt"]] + [reference_text(p) for _ in references] + [prediction_text(predictions[n][i]) for n in predictions]
            for i, p in enumerate(first)]
    return "<h3>Example predictions</h3>" + html_table(["prompt", *references] + list(predictions), rows)


def render(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` from the files in the run directory and return its path."""
    import yaml

    run_dir = Path(run_dir)
    recipe_file = rundir.path(run_dir, rundir.RECIPE)
    recipe_text = recipe_file.read_text() if recipe_file.is_file() else ""
    recipe = yaml.safe_load(recipe_text) or {}
    status, metrics = rundir.status(run_dir), rundir.metrics(run_dir)
    env = read_json(rundir.path(run_dir, rundir.ENV), {})
    name = recipe.get("name", run_dir.parent.name)
    sections = [f"<h1>ftkit report: {esc(name)}</h1><p class='muted'>run {esc(run_dir.name)}</p>",
                "<h2>Summary</h2>", _summary(run_dir, recipe, status, metrics, env),
                "<h2>Recipe</h2>", f"<pre>{esc(recipe_text)}</pre>",
                "<h2>Environment</h2>", f"<pre>{esc(json.dumps(env, indent=2))}</pre>",
                "<h2>Stage notebooks</h2>"]
    for stage in rundir.NOTEBOOKS:
        path = rundir.executed_notebook(run_dir, stage)
        if path.is_file():
            try:
                body = notebook_html(path)
            except Exception as exc:  # a partial notebook from a killed stage must not stop the report
                body = f"<p class='failed'>This notebook could not be rendered: {esc(exc)}</p>"
            sections.append(f'<section class="notebook" id="stage-{stage}"><h2>{esc(stage)}</h2>{body}</section>')
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ftkit · {esc(name)}</title>"
            f"<style>{CSS}{code_css()}</style></head><body>{''.join(sections)}</body></html>")
    return write_atomic(rundir.path(run_dir, rundir.REPORT), redact(page))
