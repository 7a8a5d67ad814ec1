"""Compare runs: one self-contained HTML page with every run's metrics side by side (the best of each column in
bold), the recipe keys that differ between the runs, and their training curves overlaid.

    ftkit compare reports/quickstart/20261126-101500 reports/quickstart/20261126-113000 -o compare.html
    ftkit run recipes/quickstart.yaml --sweep sft.learning_rate=1e-3,3e-4     (runs both, then compares them)
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import yaml

from ftkit.core import rundir
from ftkit.core.io import write_atomic
from ftkit.report.display import plot_phases
from ftkit.report.markup import CSS, esc, fmt, png
from ftkit.report.tables import change_text, metric_name

LOWER_IS_BETTER = ("loss", "perplexity", "error")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "mix":  # an empty section adds no key: {} and absent read the same
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_run(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    recipe = rundir.path(run_dir, rundir.RECIPE)
    if not recipe.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {rundir.RECIPE}); pass directories that "
                                "`ftkit run` wrote, e.g. reports/quickstart/<run id>")
    return {"dir": run_dir, "recipe": yaml.safe_load(recipe.read_text()) or {}, "metrics": rundir.metrics(run_dir),
            "status": rundir.status(run_dir)}


def metrics_rows(runs: list[dict]) -> tuple[list[str], list[list]]:
    """Columns and one row per run: each evaluated model's headline metric (and sampled accuracy, where eval
    sampled; the mean numeric error, for numeric answers; macro-F1, for a classification), SFT loss, RL reward."""
    columns = []
    for run in runs:
        for name, m in run["metrics"].get("eval", {}).items():
            for column in (f"{name} {metric_name(m)}", *([f"{name} sampled"] if "sampled" in m else []),
                           *([f"{name} numeric error (mean)"] if m.get("numeric_error", {}).get("n") else []),
                           *([f"{name} macro-F1"] if "classes" in m else [])):
                if column not in columns:
                    columns.append(column)
    columns += ["sft final_loss", "rl final_reward"]
    rows = []
    for run in runs:
        values = {f"{n} {metric_name(m)}": m.get(metric_name(m)) for n, m in run["metrics"].get("eval", {}).items()}
        values.update({f"{n} sampled": m["sampled"]["value"] for n, m in run["metrics"].get("eval", {}).items()
                       if "sampled" in m})
        values.update({f"{n} numeric error (mean)": m["numeric_error"]["mean"]
                       for n, m in run["metrics"].get("eval", {}).items() if m.get("numeric_error", {}).get("n")})
        values.update({f"{n} macro-F1": m["classes"]["macro_f1"] for n, m in run["metrics"].get("eval", {}).items()
                       if "classes" in m})
        values["sft final_loss"] = run["metrics"].get("sft", {}).get("final_loss")
        values["rl final_reward"] = run["metrics"].get("rl", {}).get("final_reward")
        rows.append([values.get(c) for c in columns])
    kept = [i for i, c in enumerate(columns) if any(row[i] is not None for row in rows)]  # no SFT anywhere: no column
    return [columns[i] for i in kept], [[row[i] for i in kept] for row in rows]


def _intervals(run: dict, columns: list[str]) -> dict[str, str]:
    """' [low, high]' after each evaluated model's headline metric, sampled accuracy and mean numeric error: its 95%
    bootstrap interval."""
    out = {}
    for name, m in run["metrics"].get("eval", {}).items():
        for column, ci in ((f"{name} {metric_name(m)}", m.get("ci95")),
                           (f"{name} sampled", m.get("sampled", {}).get("ci95")),
                           (f"{name} numeric error (mean)", m.get("numeric_error", {}).get("ci95"))):
            if column in columns and ci and None not in ci:
                out[column] = f" [{fmt(ci[0])}, {fmt(ci[1])}]"
    return out


def robustness_rows(runs: list[dict]) -> tuple[list[str], list[list]]:
    """Columns and one row per run: each evaluated model's change under each perturbation, with its interval."""
    columns = []
    for run in runs:
        for name, m in run["metrics"].get("eval", {}).items():
            columns += [f"{name} {kind}" for kind in m.get("robustness", {}) if kind != "clean"
                        and f"{name} {kind}" not in columns]
    rows = []
    for run in runs:
        values = {f"{name} {kind}": change_text(figures) for name, m in run["metrics"].get("eval", {}).items()
                  for kind, figures in m.get("robustness", {}).items() if kind != "clean"}
        rows.append([values.get(c) for c in columns])
    return columns, rows


def differing_keys(runs: list[dict]) -> dict[str, list]:
    """Recipe keys (dotted) whose values are not the same in every run."""
    flats = [_flatten(r["recipe"]) for r in runs]
    keys = sorted(set().union(*flats))
    return {k: [f.get(k) for f in flats] for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1}


def _curves(runs: list[dict], labels: list[str]) -> list[str]:
    images = []
    for title, stage, read in (("SFT loss", "sft", lambda d: rundir.loss_curve(d)),
                               ("RL reward", "rl", lambda d: rundir.reward_curve(d)[:2])):
        present = [(label, run) for label, run in zip(labels, runs) if rundir.log_history(run["dir"], stage)]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        for label, run in present:
            steps, values = read(run["dir"])
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        plt.close(fig)
        images.append(png(fig))
    return images


def _robustness(runs: list[dict], labels: list[str]) -> str:
    columns, rows = robustness_rows(runs)
    if not columns:
        return ""
    body = "".join(f"<tr><td>{esc(label)}</td>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>"
                   for label, row in zip(labels, rows))
    return ("<h2>Robustness</h2><p>Change of the headline metric under each perturbation against the same prompts "
            "unperturbed, with its 95% paired bootstrap interval (closer to 0: more robust).</p><table id='robustness'>"
            "<thead><tr><th>run</th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead><tbody>"
            + body + "</tbody></table>")


def _phases(runs: list[dict], labels: list[str]) -> str:
    """Each run's stages as stacked bars of their phases, one under the other."""
    bars = {f"{label} · {stage}": phases for run, label in zip(runs, labels)
            for stage, phases in run["metrics"].get(rundir.PHASES, {}).items()}
    figure = plot_phases(bars, title="Where each run's time went")
    return f'<h2>Where the time went</h2><div id="phases">{png(figure)}</div>' if figure else ""


def render(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write the comparison page for `run_dirs` to `out` and return its path."""
    runs = [load_run(d) for d in run_dirs]
    labels = [f"{r['recipe'].get('name', r['dir'].parent.name)}/{r['dir'].name}" for r in runs]
    columns, rows = metrics_rows(runs)
    best = {}
    for j, column in enumerate(columns):
        values = [row[j] for row in rows if isinstance(row[j], (int, float))]
        if len(values) > 1:
            best[j] = min(values) if any(w in column for w in LOWER_IS_BETTER) else max(values)
    body = []
    for label, run, row in zip(labels, runs, rows):
        failed = [s for s, v in run["status"].items() if v.get("state") == "failed"]
        cis = _intervals(run, columns)
        cells = "".join(f"<td>{'<b>' if j in best and v == best[j] else ''}{esc(fmt(v))}"
                        f"{'</b>' if j in best and v == best[j] else ''}{esc(cis.get(columns[j], ''))}</td>"
                        for j, v in enumerate(row))
        body.append(f"<tr><td>{esc(label)}</td><td>{esc(', '.join(failed) or 'ok')}</td>{cells}</tr>")
    table = ("<table id='runs'><thead><tr><th>run</th><th>failed stages</th>"
             + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead><tbody>" + "".join(body)
             + "</tbody></table>")
    differing = differing_keys([{**r, "recipe": {k: v for k, v in r["recipe"].items() if k != "name"}} for r in runs])
    diff = ("<table id='differences'><thead><tr><th>recipe key</th>" + "".join(f"<th>{esc(label)}</th>" for label in labels)
            + "</tr></thead><tbody>" + "".join(
                f"<tr><td>{esc(k)}</td>" + "".join(f"<td>{esc(json.dumps(v))}</td>" for v in values) + "</tr>"
                for k, values in differing.items()) + "</tbody></table>") if differing else \
        "<p>The runs' recipes are the same (apart from their names).</p>"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ftkit · comparison of {len(runs)} "
            f"runs</title><style>{CSS}</style></head><body><h1>ftkit: {len(runs)} runs compared</h1>"
            "<h2>Metrics</h2><p>Headline metric of each evaluated model on its run's held-out test set, with its 95% "
            "bootstrap interval; the best of each column in bold (lowest for losses, perplexity and numeric "
            "error).</p>" + table
            + _robustness(runs, labels) + "<h2>Recipe keys that differ</h2>" + diff
            + "<h2>Training curves</h2>" + "".join(_curves(runs, labels)) + _phases(runs, labels) + "</body></html>")
    return write_atomic(Path(out), page)
