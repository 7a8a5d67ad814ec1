"""Metrics recording, plots, and the self-contained `report.html` of a run.

The report is one HTML file with no external references: a summary first (stages, metrics of every model,
key plots, example predictions), then the resolved recipe, the environment and each stage's executed
notebook rendered by nbconvert without code. Every piece of text that comes from data or a model is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import matplotlib.pyplot as plt

from ftkit.io import read_json, redact, update_json, write_atomic
from ftkit.machine import describe_cpu
from ftkit.runner import NOTEBOOKS, stage_state

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1a1a1a;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:.85em;white-space:pre-wrap}
img{max-width:100%}.failed{background:#fde8e8;border:1px solid #e0a0a0;padding:.8em;border-radius:4px}
.state-done{color:#11772d}.state-failed,.state-interrupted{color:#b00020;font-weight:bold}.muted{color:#666}
.notebook{border:1px solid #e3e3e3;padding:0 1em;margin:1em 0;border-radius:4px}
.jp-OutputPrompt,.jp-InputPrompt{display:none}
details.code>summary{color:#666;font-size:.8em;cursor:pointer}details.code .highlight pre{margin:.2em 0}
@media print{.notebook{break-before:page}details.code{display:none}}
"""


def record(run_dir: str | Path, stage: str, metrics: dict) -> None:
    """Record one stage's metrics under its key in `<run_dir>/metrics.json`."""
    update_json(Path(run_dir) / "metrics.json", stage, metrics)


def plot_curve(steps, values, title: str, ylabel: str, spread=None):
    """A line plot of a training curve (with a ±spread band when given); returns the figure."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, values, marker="o", markersize=3)
    if spread is not None:
        low = [v - s for v, s in zip(values, spread)]
        high = [v + s for v, s in zip(values, spread)]
        ax.fill_between(steps, low, high, alpha=0.2)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)  # shown once, by the notebook's display of the returned figure
    return fig


def plot_losses(run_dir: str | Path):
    """SFT training loss per logged step, with the validation loss when there is a validation split."""
    from ftkit.sft import loss_curve

    fig = plot_curve(*loss_curve(run_dir), title="SFT loss", ylabel="loss")
    steps, values = loss_curve(run_dir, key="eval_loss")
    if steps:
        ax = fig.axes[0]
        ax.plot(steps, values, marker="s", markersize=3, label="validation")
        ax.lines[0].set_label("train")
        ax.legend()
    return fig


def plot_rl(run_dir: str | Path):
    """The RL stage's curves side by side: GRPO/RLOO total reward (± std), each reward function, KL, completion
    length and loss; DPO chosen/rejected rewards, margin, accuracy and loss. Returns the figure."""
    from ftkit.rl import curves, reward_curve

    series = curves(run_dir)
    fig, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 3), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes[0], series.items()):
        ax.plot(steps, values, marker="o", markersize=3)
        if name == "reward":
            _, means, stds = reward_curve(run_dir)
            ax.fill_between(steps, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                            alpha=0.2)
            name = "reward (mean ± std)"
        ax.set(title=name, xlabel="step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_hist(values, limit: int | None = None, title: str = ""):
    """A histogram of integer values from 0 (with a dashed line at `limit` when given); returns the figure."""
    import numpy as np

    upper = max([*values, limit or 0, 1])
    width = max(1, upper // 40)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=np.arange(0, upper + 2 * width, width), color="#4c72b0")
    if limit is not None:
        ax.axvline(limit, color="#c44e52", linestyle="--", label=f"limit {limit}")
        ax.legend()
    ax.set(title=title, xlabel="tokens", ylabel="examples")
    fig.tight_layout()
    plt.close(fig)
    return fig


class TokenView:
    """HTML of examples as tokens: masked prompt tokens in grey, trained answer tokens highlighted (escaped)."""

    def __init__(self, examples: list[tuple[list[str], list[str]]], tokenizer):
        self.examples, self.tokenizer = examples, tokenizer

    def _span(self, token: str, trained: bool) -> str:
        text = self.tokenizer.convert_tokens_to_string([token])
        style = "background:#d4f4dd;font-weight:bold" if trained else "color:#888"
        return f'<span style="{style}" title="{_esc(token)}">{_esc(text)}</span>'

    def _repr_html_(self) -> str:
        blocks = ["<p><span style='color:#888'>grey: masked (no loss)</span> · "
                  "<span style='background:#d4f4dd;font-weight:bold'>green: trained</span></p>"]
        for prompt, answer in self.examples:
            spans = [self._span(t, False) for t in prompt] + [self._span(t, True) for t in answer]
            blocks.append(f"<pre style='white-space:pre-wrap'>{''.join(spans)}</pre>")
        return "".join(blocks)


def token_view(rows: list[dict], tokenizer, limit: int = 3) -> TokenView:
    from ftkit.data import trained_tokens

    return TokenView([trained_tokens(r, tokenizer) for r in rows[:limit]], tokenizer)


def metrics_table(eval_metrics: dict):
    """DataFrame: one row per evaluated model with its metric (accuracy, or perplexity for plain text), 95% CI
    and n."""
    import pandas as pd

    rows = [{"model": name, metric_name(m): m[metric_name(m)], "ci95_low": m["ci95"][0], "ci95_high": m["ci95"][1],
             "n": m["n"], "vs base": versus_base(m, eval_metrics.get("base")), **_paired(m)}
            for name, m in eval_metrics.items()]
    return pd.DataFrame(rows).set_index("model")


def _paired(model_metrics: dict) -> dict:
    paired = model_metrics.get("vs_base")
    if not paired:
        return {"p (paired)": None, "fail→pass": None, "pass→fail": None}
    return {"p (paired)": f"{paired['p_value']:.2g}", "fail→pass": paired["fail_to_pass"],
            "pass→fail": paired["pass_to_fail"]}


def all_metrics_table(eval_metrics: dict):
    """DataFrame: every metric of every model (with its 95% CI where it has per-example scores), and the loss and
    perplexity on the reference answers."""
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
        table[name] = row
    return pd.DataFrame(table).T


# ---------------------------------------------------------------- HTML


def metric_name(model_metrics: dict) -> str:
    return model_metrics.get("metric", "accuracy")


def _settings(settings: dict | None) -> str:
    """Speed settings in a few words: "bfloat16 weights, bfloat16 compute, padded, checkpointing off"."""
    if not settings:
        return ""
    return (f"{settings.get('weights', '?')} weights, {settings['dtype']} compute, "
            f"{'padding-free' if settings['padding_free'] else 'padded'}, "
            f"checkpointing {'on' if settings['gradient_checkpointing'] else 'off'}")


def versus_base(model_metrics: dict, base: dict | None) -> str:
    """The change from the base model: accuracy in points, perplexity in percent (lower is better)."""
    name = metric_name(model_metrics)
    if not base or base is model_metrics or name not in base:
        return ""
    if name == "perplexity":
        return f"{100 * (model_metrics[name] / base[name] - 1):+.1f}%"
    return f"{100 * (model_metrics[name] - base[name]):+.1f} points"


def shown(prediction: dict) -> str:
    """A prediction as the comparison tables show it: ✓/✗ and the output, or the text's perplexity and the
    model's continuation."""
    if "perplexity" in prediction:
        return f"ppl {prediction['perplexity']:.1f} · {prediction['output']}"
    return ("✓ " if prediction["score"] else "✗ ") + prediction["output"]


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value, digits=3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("" if value is None else str(value))


def machine_line(env: dict) -> str:
    """Where the run ran, in one line: the GPU, or the CPU with the flags that decide bfloat16 speed."""
    cpu = env.get("cpu")
    where = describe_cpu(cpu) if cpu else env.get("processor", "")
    return f"GPU {env['gpu']}; CPU {where}" if env.get("gpu") else f"CPU {where}"


def _summary(run_dir: Path, recipe: dict, status: dict, metrics: dict, env: dict) -> str:
    parts = []
    failed = {s: v for s, v in status.items() if stage_state(v) == "failed"}
    for stage, info in failed.items():
        parts.append(f'<div class="failed"><b>Stage {_esc(stage)} failed:</b> {_esc(info.get("error"))}<br>'
                     f'Open the executed notebook <code>{_esc(info.get("notebook"))}</code> for the traceback.</div>')
    parts.append(f"<p><b>Model:</b> {_esc(recipe.get('model', {}).get('id'))} &nbsp; "
                 f"<b>Data:</b> {_esc(metrics.get('data', {}).get('source') or recipe.get('data', {}).get('task'))}"
                 " &nbsp; "
                 f"<b>Seed:</b> {_esc(recipe.get('seed'))}</p>"
                 f"<p><b>Machine:</b> {_esc(machine_line(env))}</p>")
    rows = []
    for stage, info in status.items():
        state = stage_state(info)
        note = info.get("error") or ""
        if state == "interrupted":
            note = f"the process running it stopped (killed?) after {info.get('start')}; `ftkit resume` continues it"
        elif state == "done" and info.get("reused"):
            note = f"unchanged, reused on {info['reused']} (ran {info.get('start')})"
        rows.append(f'<tr><td>{_esc(stage)}</td><td class="state-{_esc(state.replace(" ", "-"))}">'
                    f'{_esc(state)}</td><td>{_esc(_fmt(info.get("duration_s"), 1))}</td>'
                    f'<td>{_esc(note)}</td></tr>')
    parts.append("<h3>Stages</h3><table><thead><tr><th>stage</th><th>state</th><th>seconds</th><th>error</th>"
                 f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    data = metrics.get("data", {})
    if data.get("splits"):
        rows = [[name, s["examples"], s.get("tokens_p50", ""), s.get("tokens_p90", ""), s.get("tokens_max", "")]
                for name, s in data["splits"].items()]
        drops = ", ".join(f"{k}: {v}" for k, v in data.get("drops", {}).items()) or "none"
        overlap = data.get("contamination", {})
        parts.append(f"<h3>Data</h3><p>Source: {_esc(data.get('source'))}. Dropped: {_esc(drops)}. "
                     f"Test prompts also in train: {_esc(overlap.get('ngram_overlaps'))} "
                     f"({_esc(overlap.get('exact_matches'))} exact).</p>"
                     + _table(["split", "examples", "tokens p50", "tokens p90", "tokens max"], rows))
        if data.get("mix"):
            rows = [[name, m["weight"], m["available"], m["wanted"], m["taken"]] for name, m in data["mix"].items()]
            parts.append("<p>Mixed sources (data.mix):</p>"
                         + _table(["source", "weight", "available", "wanted", "taken"], rows))
    trained = {stage: metrics[stage] for stage in ("sft", "rl") if metrics.get(stage, {}).get("steps")}
    if trained:
        rows = [[stage, m["steps"], m.get("processes", 1), m.get("trainable_parameters"), m.get("train_seconds"),
                 m.get("real_tokens", ""), m.get("real_tokens_per_second", ""), m.get("resumed_from_step") or "",
                 _settings(m.get("settings"))] for stage, m in trained.items()]
        parts.append("<h3>Training</h3>" + _table(["stage", "steps", "processes", "trained parameters", "seconds",
                                                   "real tokens", "real tokens/s", "resumed from step", "settings"],
                                                  rows))
    evaluated = metrics.get("eval", {})
    if evaluated:
        metric = metric_name(next(iter(evaluated.values())))
        rows = [[name, _fmt(m[metric]), f"[{_fmt(m['ci95'][0])}, {_fmt(m['ci95'][1])}]", m["n"],
                 versus_base(m, evaluated.get("base"))] + [_fmt(v) for v in _paired(m).values()]
                for name, m in evaluated.items()]
        parts.append('<h3>1 · Task performance (held-out test set)</h3><div id="metrics">'
                     + _table(["model", metric, "95% CI (bootstrap)", "n", "vs base", "p (paired test)", "fail→pass",
                               "pass→fail"], rows) + "</div>")
        others = all_metrics_table(evaluated)
        if len(others.columns) > 1:
            parts.append("<p>Every metric (95% CI) and the loss on the reference answers:</p>"
                         + _table(["model", *others.columns], [[n, *(_fmt(v) for v in r)]
                                                               for n, r in zip(others.index, others.values)]))
        parts.append(_claims(evaluated))
        parts.append(_flips(run_dir, [n for n in evaluated if n != "base"]))
    exported = metrics.get("export", {})
    if exported.get("merged") or exported.get("adapter"):
        check = exported.get("check", {})
        same = (f"; loaded with plain transformers, {check['same_as_eval']} of {check['prompts']} outputs match the eval "
                "stage's" if "same_as_eval" in check else "")
        parts.append(f"<h3>Export</h3><p>The {_esc(exported.get('model'))} model: "
                     f"{_esc(', '.join(str(exported[k]) for k in ('merged', 'adapter') if exported.get(k)))} in the run "
                     f"directory{_esc(same)}{_esc('; pushed to ' + exported['pushed_to'] if exported.get('pushed_to') else '')}.</p>")
    plots = []
    if (run_dir / "sft" / "log_history.json").is_file():
        plots.append(_png(plot_losses(run_dir)))
    if (run_dir / "rl" / "log_history.json").is_file():
        plots.append(_png(plot_rl(run_dir)))
    if plots:
        parts.append("<h3>Training</h3>" + "".join(plots))
    parts.append(_rl_samples(run_dir))
    parts.append(_examples(run_dir, list(evaluated)))
    return "\n".join(parts)


def _claims(evaluated: dict) -> str:
    from ftkit.evaluation import claims

    table = claims(evaluated)
    if len(table.columns) < 2:
        return ""
    first = next(iter(evaluated.values()))
    shifted = first.get("generalization", {})
    perturbed = first.get("robustness", {}).get("clean", {})
    rows = [[name, *(_fmt(v) for v in values)] for name, values in zip(table.index, table.values)]
    return ("<h3>2 · Generalization and 3 · Robustness</h3>"
            f"<p>Generalization: the headline metric on a related but shifted test set ({_esc(shifted.get('n', 0))} "
            f"examples). Robustness: its change on the first {_esc(perturbed.get('n', 0))} test prompts under each "
            "perturbation (negative: worse than on the unperturbed prompts).</p>"
            + _table(["model", *table.columns], rows))


def _flips(run_dir: Path, names: list[str], limit: int = 8) -> str:
    parts = []
    for name in names:
        path = run_dir / "eval" / f"flips_{name}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        if records:
            rows = [[r["flip"], r["prompt"], r["reference"], r["base"], r[name]] for r in records[:limit]]
            parts.append(f"<p>{_esc(name)} against base: {len(records)} examples flipped (first {len(rows)}):</p>"
                         + _table(["flip", "prompt", "reference", "base", name], rows))
    return "".join(parts)


def _rl_samples(run_dir: Path) -> str:
    path = run_dir / "rl" / "samples.jsonl"
    if not path.is_file():
        return ""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        return ""
    names = [k for k in records[0] if k not in ("step", "prompt", "completion")]
    rows = [[r["step"], r["prompt"], r["completion"]] + [_fmt(r.get(n)) for n in names] for r in records]
    return ("<h3>RL samples</h3><p>Completions sampled during RL, with each reward (total: weighted sum).</p>"
            + _table(["step", "prompt", "completion"] + names, rows))


def _examples(run_dir: Path, names: list[str], limit: int = 12) -> str:
    preds = {}
    for name in names:
        path = run_dir / "eval" / f"predictions_{name}.jsonl"
        if path.is_file():
            preds[name] = [json.loads(line) for line in path.read_text().splitlines()[:limit]]
    if not preds:
        return ""
    first = next(iter(preds.values()))
    rows = [[p["prompt"], p["reference"]] + [shown(preds[n][i]) for n in preds] for i, p in enumerate(first)]
    return "<h3>Example predictions</h3>" + _table(["prompt", "reference"] + list(preds), rows)


TEMPLATES = Path(__file__).parent / "templates"


def _notebook_html(path: Path) -> str:
    """An executed notebook as HTML: outputs shown, each code cell folded behind a <details> toggle (ftkit's
    template over nbconvert's basic one), the parameters cells left out, no script."""
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config

    config = Config()
    config.TagRemovePreprocessor.remove_cell_tags = ("injected-parameters", "parameters")
    config.TagRemovePreprocessor.enabled = True
    exporter = HTMLExporter(config=config, template_name="ftkit", extra_template_basedirs=[str(TEMPLATES)],
                            exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(config=config), enabled=True)
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    # the report must open offline and run nothing: drop any script element the template adds
    return re.sub(r"<script\b.*?</script>", "", body, flags=re.S | re.I)


def _code_css() -> str:
    """Pygments colours for the folded code cells (nbconvert's basic template leaves them out)."""
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".highlight")


def render(run_dir: str | Path) -> Path:
    """Write `<run_dir>/report.html` from the files in the run directory and return its path."""
    import yaml

    run_dir = Path(run_dir)
    recipe_text = (run_dir / "recipe.yaml").read_text() if (run_dir / "recipe.yaml").is_file() else ""
    recipe = yaml.safe_load(recipe_text) or {}
    status = read_json(run_dir / "status.json", {})
    metrics = read_json(run_dir / "metrics.json", {})
    env = read_json(run_dir / "env.json", {})
    name = recipe.get("name", run_dir.parent.name)
    sections = [f"<h1>ftkit report: {_esc(name)}</h1><p class='muted'>run {_esc(run_dir.name)}</p>",
                "<h2>Summary</h2>", _summary(run_dir, recipe, status, metrics, env),
                "<h2>Recipe</h2>", f"<pre>{_esc(recipe_text)}</pre>",
                "<h2>Environment</h2>", f"<pre>{_esc(json.dumps(env, indent=2))}</pre>",
                "<h2>Stage notebooks</h2>"]
    for stage, filename in NOTEBOOKS.items():
        path = run_dir / "notebooks" / filename
        if path.is_file():
            try:
                body = _notebook_html(path)
            except Exception as exc:  # a partial notebook from a killed stage must not stop the report
                body = f"<p class='failed'>This notebook could not be rendered: {_esc(exc)}</p>"
            sections.append(f'<section class="notebook" id="stage-{stage}"><h2>{_esc(stage)}</h2>{body}</section>')
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ftkit · {_esc(name)}</title>"
            f"<style>{CSS}{_code_css()}</style></head><body>{''.join(sections)}</body></html>")
    return write_atomic(run_dir / "report.html", redact(page))
