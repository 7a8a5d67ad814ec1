"""What the notebooks and the report show: training curves, token histograms and views, and the tables of
metrics, claims, flips, RL samples and side-by-side predictions. Everything here reads the run directory or the
results a stage returns, never a stage module; no torch.
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt

from ftkit.core import rundir, timing
from ftkit.core.rows import trained_tokens


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
    fig = plot_curve(*rundir.loss_curve(run_dir), title="SFT loss", ylabel="loss")
    steps, values = rundir.loss_curve(run_dir, key="eval_loss")
    if steps:
        ax = fig.axes[0]
        ax.plot(steps, values, marker="s", markersize=3, label="validation")
        ax.lines[0].set_label("train")
        ax.legend()
    return fig


def plot_phases(bars: dict[str, dict[str, float]], title: str = "Where the time went"):
    """One horizontal bar per entry of `bars` (a stage, or a run's stage), stacked from its phases' seconds in the
    order of `ftkit.core.timing.PHASES`, one colour per phase; the largest phases of each bar are labelled.
    None when no bar has a phase."""
    bars = {label: phases for label, phases in bars.items() if phases}
    if not bars:
        return None
    names = [n for n in timing.PHASES if any(n in phases for phases in bars.values())]
    colours = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]  # a colour for each of the 21 phases
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.4 * len(bars)), layout="constrained")
    labels = list(bars)[::-1]  # the first stage at the top
    for name in names:
        index = timing.PHASES.index(name)
        widths = [bars[label].get(name, 0.0) for label in labels]
        lefts = [sum(bars[label].get(n, 0.0) for n in names[:names.index(name)]) for label in labels]
        ax.barh(labels, widths, left=lefts, color=colours[index % len(colours)], label=name, edgecolor="white", linewidth=0.5)
        for y, (left, width, label) in enumerate(zip(lefts, widths, labels)):
            if width >= 0.12 * sum(bars[label].values()):
                ax.text(left + width / 2, y, f"{width:.0f}", ha="center", va="center", fontsize=7)
    ax.set(title=title, xlabel="seconds")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    plt.close(fig)
    return fig


TITLES = {"frac_reward_zero_std": "prompts with no reward spread", "completions/clipped_ratio": "cut at max length",
          "reward": "reward (mean ± std)"}


def plot_rl(run_dir: str | Path):
    """The RL stage's curves, four to a row: GRPO/RLOO total reward (± std), each reward function, the share of
    prompts whose completions all got the same reward (no learning signal) and of completions cut at
    max_completion_length, KL, completion length and loss; DPO chosen/rejected rewards, margin, accuracy and loss.
    Returns the figure."""
    series = rundir.rl_curves(run_dir)
    rows = -(-len(series) // 4)
    fig, axes = plt.subplots(rows, min(4, len(series)), figsize=(3.2 * min(4, len(series)), 2.8 * rows), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes.flat, series.items()):
        ax.plot(steps, values, marker="o", markersize=3)
        if name == "reward":
            _, means, stds = rundir.reward_curve(run_dir)
            ax.fill_between(steps, [m - d for m, d in zip(means, stds)], [m + d for m, d in zip(means, stds)],
                            alpha=0.2)
        if name in rundir.SIGNAL:
            ax.set_ylim(-0.05, 1.05)
        ax.set(title=TITLES.get(name, name), xlabel="step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.tight_layout()
    plt.close(fig)
    return fig


def signal_warning(rl_metrics: dict, rl_recipe: dict) -> str | None:
    """A plain warning, with what to change, when at least half of RL's prompts (and so of its sampled completions)
    taught nothing because all their completions got the same reward, when a quarter of its steps taught nothing at
    all, or when its completions were cut short; None otherwise."""
    signal = rl_metrics.get("signal") or {}
    notes = []
    share, steps = signal.get("zero_spread_share"), signal.get("logged_steps") or 0
    silent = signal.get("steps_without_signal", 0)
    if share is not None and (share >= 0.5 or (steps and silent / steps >= 0.25)):
        notes.append(f"{share:.0%} of the prompts in an average step gave all their completions the same reward, so "
                     f"their advantage and gradient were zero, and {silent} of {steps} steps had no reward spread at "
                     "all: RL learned little. Try rl.filter_prompts: true, more prompts per step "
                     "(rl.prompts_per_step), more completions per prompt (rl.num_generations) or a higher "
                     "rl.temperature.")
    clipped = signal.get("clipped_share")
    if clipped is not None and clipped >= 0.2:
        notes.append(f"{clipped:.0%} of the completions were cut at rl.max_completion_length = "
                     f"{rl_metrics.get('max_completion_length', rl_recipe.get('max_completion_length'))} tokens: raise it, or the reward judges unfinished "
                     "replies.")
    return " ".join(notes) or None


def rl_signal(run_dir: str | Path):
    """Per logged RL step: reward mean and spread, the share of prompts without reward spread, the share of
    completions cut at the length limit, and completion length (a DataFrame)."""
    import pandas as pd

    keys = {"reward": "reward", "reward_std": "reward std", "frac_reward_zero_std": "no-spread share",
            "completions/clipped_ratio": "cut share", "completions/mean_length": "mean length"}
    rows = [{"step": h["step"], **{label: h.get(key) for key, label in keys.items()}}
            for h in rundir.log_history(run_dir, "rl") if "reward" in h]
    return pd.DataFrame(rows).set_index("step") if rows else pd.DataFrame()


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


PLAN_KEYS = ("dtype", "processes", "shard", "batch_size", "micro_batch_size", "gradient_accumulation_steps",
             "gradient_checkpointing", "max_length", "padding_free", "steps", "epochs", "optimizer")


def plan_rows(plan: dict | None) -> list[list]:
    """A training stage's resolved plan (`<run>/<stage>/plan.json`, also in its figures) as (setting, value, why)
    rows: what ftkit chose, and why.

    >>> plan_rows({"dtype": "float32", "micro_batch_size": 4, "why": {"micro_batch_size": "set in the recipe"}})
    [['dtype', 'float32', ''], ['micro_batch_size', 4, 'set in the recipe']]
    """
    plan = plan or {}
    memory = plan.get("memory")
    return [[key, plan[key], plan.get("why", {}).get(key, "")] for key in PLAN_KEYS if key in plan] + (
        [["memory estimate", f"{memory['estimated_gb']} GB", f"of {memory['available_gb']} GB on "
                                                             f"{memory['available_on']}"]] if memory else [])


def plan_table(plan: dict | None):
    """`plan_rows` as a DataFrame, for the notebooks."""
    import pandas as pd

    return pd.DataFrame(plan_rows(plan), columns=["setting", "value", "why"]).set_index("setting")


def length_note(data_metrics: dict, max_length) -> tuple[str, int]:
    """What `sft.max_length: auto` became and why (from the data figures), and the length in force.

    >>> length_note({"max_length": {"chosen": 40, "rule": "longest", "longest": 35, "p99": 35}}, "auto")[0]
    'sft.max_length: auto chose 40 tokens: the longest example (35), rounded up to a multiple of 8'
    >>> length_note({}, 128)
    ('sft.max_length: 128 tokens (set in the recipe)', 128)
    """
    fit = data_metrics.get("max_length")
    if not fit:
        return f"sft.max_length: {max_length} tokens (set in the recipe)", max_length
    why = (f"the longest example ({fit['longest']})" if fit["rule"] == "longest" else
           f"the 99th percentile ({fit['p99']}; the longest, {fit['longest']}, is over 1.5 times it, so the few "
           "longer ones are dropped or cut as data.too_long says)")
    capped = f", then capped by {fit['capped_by']}" if fit.get("capped_by") else ""
    return f"sft.max_length: auto chose {fit['chosen']} tokens: {why}, rounded up to a multiple of 8{capped}", \
        fit["chosen"]


class TokenView:
    """HTML of examples as tokens: masked prompt tokens in grey, trained answer tokens highlighted (escaped)."""

    def __init__(self, examples: list[list[tuple[list[str], bool]]], tokenizer):
        self.examples, self.tokenizer = examples, tokenizer

    def _span(self, token: str, trained: bool) -> str:
        text = self.tokenizer.convert_tokens_to_string([token])
        style = "background:#d4f4dd;font-weight:bold" if trained else "color:#888"
        return f'<span style="{style}" title="{html.escape(token)}">{html.escape(text)}</span>'

    def _repr_html_(self) -> str:
        blocks = ["<p><span style='color:#888'>grey: masked (no loss)</span> · "
                  "<span style='background:#d4f4dd;font-weight:bold'>green: trained</span></p>"]
        for runs in self.examples:  # runs of tokens, trained or not, in order: every assistant turn is trained
            spans = [self._span(t, trained) for tokens, trained in runs for t in tokens]
            blocks.append(f"<pre style='white-space:pre-wrap'>{''.join(spans)}</pre>")
        return "".join(blocks)


def token_view(rows: list[dict], tokenizer, limit: int = 3) -> TokenView:
    """`limit` rows as tokens, trained ones highlighted: the first rows, and the first conversation with earlier
    turns among them where the data has one (its every assistant turn is trained)."""
    shown = rows[:limit]
    several = next((r for r in rows if any(m["role"] == "assistant" for m in r.get("history", []))), None)
    if several is not None and several not in shown:
        shown = shown[:limit - 1] + [several]
    return TokenView([trained_tokens(r, tokenizer) for r in shown], tokenizer)


def teacher_note(data_metrics: dict) -> str | None:
    """What data.teacher_errors did to the training demonstrations, and what it means for the stages.

    >>> print(teacher_note({"teacher_errors": {"share": 0.4, "wrong": 180, "eligible": 450, "train": 1000,
    ...                                        "slip": "the carry dropped", "of": "sums that carry"}}))
    180 of the 1000 training answers are wrong on purpose (data.teacher_errors 0.4: the carry dropped on 40% of the 450 sums that carry, as a careless teacher would): SFT learns from them as they are, while the rewards check the right answer and test holds right answers only.
    """
    found = data_metrics.get("teacher_errors")
    if not found:
        return None
    return (f"{found['wrong']} of the {found['train']} training answers are wrong on purpose (data.teacher_errors "
            f"{found['share']:g}: {found['slip']} on {100 * found['share']:.0f}% of the {found['eligible']} "
            f"{found['of']}, as a careless teacher would): SFT learns from them as they are, while the rewards check "
            "the right answer and test holds right answers only.")


def commonest_note(data_metrics: dict) -> str | None:
    """For a classification, what always answering train's commonest class scores on test: the accuracy to beat.

    >>> commonest_note({"classes": {"names": ["pos", "neg"], "commonest": {"class": "pos", "test_share": 0.52}}})
    "2 classes (pos, neg). Always answering train's commonest class, 'pos', would score 52.0% on test."
    """
    figures = data_metrics.get("classes")
    if not figures:
        return None
    listed = ", ".join(figures["names"])
    return (f"{len(figures['names'])} classes ({listed}). Always answering "
            f"{figures['commonest'].get('of', 'train')}'s commonest class, "
            f"{figures['commonest']['class']!r}, would score {100 * figures['commonest']['test_share']:.1f}% on test.")


def rl_samples(run_dir: str | Path):
    """The completions sampled during RL with their rewards (a DataFrame; empty for DPO)."""
    import pandas as pd

    return pd.DataFrame(rundir.rl_samples(run_dir))




def or_note(table, note: str | None):
    """The table, or, where it has nothing to show, one line in its place: `note` (a feature the recipe does not
    use, or nothing found), printed; a reader of the notebook or report sees that instead of an empty table. A dict
    of tables is empty when every table in it is.

    >>> or_note({"sft": []}, "not used by this recipe: eval.judge")
    not used by this recipe: eval.judge
    >>> or_note([1], "unused")
    [1]
    """
    def empty(value) -> bool:
        if isinstance(value, dict):
            return all(empty(v) for v in value.values())
        return value is None or bool(getattr(value, "empty", False)) or (isinstance(value, (list, str)) and not value)

    if empty(table):
        if note:
            print(note)
        return None
    return table
