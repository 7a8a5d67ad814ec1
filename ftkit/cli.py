"""`ftkit run | validate | report | model` — the command line.

    ftkit run recipes/quickstart.yaml --set sft.max_steps=10
    ftkit run recipes/quickstart.yaml --run-dir reports/mine      # again later: unchanged stages are skipped
    ftkit resume reports/mine                                     # after a crash: continues where it stopped
    ftkit validate recipes/quickstart.yaml
    ftkit report reports/quickstart/20261126-101500
    ftkit compare reports/quickstart/20261126-101500 reports/quickstart/20261126-113000 -o compare.html
    ftkit run recipes/quickstart.yaml --sweep sft.learning_rate=1e-3,3e-4
    ftkit model HuggingFaceTB/SmolLM2-135M-Instruct
    ftkit chat reports/quickstart/20261126-101500 --model sft      # or --prompt "What is 23 plus 45?"
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from ftkit import recipe as recipes
from ftkit.core import rundir

EXIT_FAILED, EXIT_INVALID = 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftkit", description="Declarative, notebook-driven LLM fine-tuning.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help=f"run a recipe's stages and write {rundir.REPORT}")
    run.add_argument("recipe", metavar="RECIPE", help="the recipe's YAML file")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a recipe key, e.g. sft.learning_rate=1e-4 (repeatable)")
    run.add_argument("--stages", help="comma-separated subset of the recipe's stages to run now, e.g. data,sft")
    run.add_argument("--run-dir", help="run directory to use (default: reports/<name>/<timestamp>); stages already "
                                       "done there with the same settings, code and inputs are skipped")
    run.add_argument("--force", action="store_true", help="run every stage even when its result is up to date")
    run.add_argument("--sweep", metavar="KEY=V1,V2,...",
                     help="run one variant of the recipe per value of KEY, then write a page comparing them")
    resume = sub.add_parser("resume", help="continue a run directory: skip what is done, resume training from its "
                                           "last checkpoint, run the rest")
    resume.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (reports/<name>/<run id>)")
    resume.add_argument("--stages", help="comma-separated subset of the recipe's stages")
    resume.add_argument("--force", action="store_true", help="run every stage even when its result is up to date")
    validate = sub.add_parser("validate", help="check a recipe without running anything (exit 0 when valid)")
    validate.add_argument("recipe", metavar="RECIPE", help="the recipe's YAML file")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a recipe key, as for run (repeatable)")
    compare = sub.add_parser("compare", help="write one HTML page comparing runs")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    compare.add_argument("-o", "--output", help="the page to write (default: reports/compare-<timestamp>.html)")
    report = sub.add_parser("report", help=f"re-render {rundir.REPORT} from a run directory")
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (reports/<name>/<run id>)")
    chat = sub.add_parser("chat", help="talk to a run's model in the terminal, or answer prompts for a script")
    chat.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (reports/<name>/<run id>)")
    chat.add_argument("--model", choices=("base", "sft", "rl", "export"),
                      help="which model (default: the last trained, rl then sft, else base)")
    chat.add_argument("--prompt", action="append", metavar="TEXT",
                      help="answer TEXT and exit, each prompt on its own (repeatable); '-' reads prompts from stdin, "
                           "one a line")
    chat.add_argument("--system", help="the system prompt (default: the one the run's test prompts share)")
    chat.add_argument("--temperature", type=float, help="default: eval.temperature (0: greedy)")
    chat.add_argument("--max-new-tokens", type=int, help="default: eval.max_new_tokens as the eval stage ran it")
    chat.add_argument("--jsonl", action="store_true", help="print each answer as a JSON line {model, prompt, reply} "
                                                           "(the default when prompts come from stdin)")
    model = sub.add_parser("model", help="make a model available locally and print where it is")
    model.add_argument("id", nargs="?", default=None, help="hub id or directory (default: the default model)")
    return parser


def _stages(option: str | None, cfg) -> list[str]:
    if not option:
        return cfg.stages
    chosen = [s.strip() for s in option.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in cfg.stages]
    if unknown or not chosen:
        raise recipes.RecipeError("--stages", [f"{option!r}: {', '.join(unknown) or 'nothing'} is not among the "
                                               f"recipe's stages {cfg.stages}; pick from those"])
    return [s for s in cfg.stages if s in chosen]


def _print_event(kind, stage, result):
    if kind == "start":
        why = ("resuming: it was interrupted" if result == "interrupted" else
               f"changed: {', '.join(result)}" if result and len(result) < 5 else "")
        print(f"▶ {stage} ..." + (f" ({why})" if why else ""), flush=True)
    elif kind == "skip":
        print(f"↷ {stage} unchanged since {result.get('end')}, skipped", flush=True)
    elif kind == "progress":
        done, total = result["done"], result["total"]
        minutes, seconds = divmod(result["elapsed_s"], 60)
        print(f"  {stage}: {done}/{total} {result['unit']} ({100 * done // total}%), {minutes}m{seconds:02d}s",
              flush=True)
    elif result.ok:
        print(f"✓ {stage} done in {result.seconds:.1f} s", flush=True)
        for warning in result.warnings:
            print(f"  ⚠ {warning}", flush=True)
    else:
        print(f"✗ {stage} failed after {result.seconds:.1f} s: {result.error}", flush=True)


def _print_time(run_dir: Path, stages: list[str]) -> None:
    """The three phases of the stages that ran now that took longest, with their share of those stages' time."""
    phases = {(stage, name): s for stage in stages for name, s in rundir.phases(run_dir).get(stage, {}).items()}
    total = sum(phases.values())
    if total > 0:
        top = sorted(phases.items(), key=lambda item: -item[1])[:3]
        print("most time: " + ", ".join(f"{stage} {name} {s:.0f} s ({100 * s / total:.0f}%)"
                                        for (stage, name), s in top), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("papermill", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("traitlets").setLevel(logging.ERROR)  # nbconvert's notes on image alt text
    commands = {"run": _run, "resume": _resume, "validate": _validate, "report": _report, "compare": _compare,
                "model": _model, "chat": _chat}
    return commands[args.command](args)


def _is_run_dir(run_dir: str) -> bool:
    if rundir.path(run_dir, rundir.RECIPE).is_file():
        return True
    print(f"ftkit: {run_dir} is not a run directory (no {rundir.RECIPE} in it)", file=sys.stderr)
    return False


def _load(recipe_path: str, overrides: list[str], stages_option: str | None = None):
    """(recipe, stages to run), or a RecipeError listing every problem."""
    cfg = recipes.load(recipe_path, overrides)
    return cfg, _stages(stages_option, cfg)


def _checked(cfg, recipe_path: str, stages: list[str]) -> bool:
    """The memory estimate (printed) and the machine checks for the stages that will run; False (problems printed)
    when the recipe cannot run here."""
    from ftkit.training import preflight

    figures = None
    if {"sft", "rl"} & set(stages):
        try:
            figures = preflight.estimate(cfg)
            print(preflight.describe(figures), flush=True)
        except preflight.ModelNotFound as exc:
            print(f"memory estimate skipped: {exc}", flush=True)
    if not preflight.preflight(cfg.model_copy(update={"stages": stages}), check_memory=False):
        from ftkit.training import plan

        for stage in [s for s in ("sft", "rl") if s in stages]:  # what each `auto` becomes on this machine
            print(plan.describe(plan.resolve(cfg, stage)), flush=True)
    problems = preflight.preflight(cfg.model_copy(update={"stages": stages}), check_memory=figures is not None,
                                   figures=figures)
    if problems:
        print(f"ftkit: {recipe_path} cannot run on this machine:\n" + "\n".join(f"  {p}" for p in problems),
              file=sys.stderr)
    return not problems


def _validate(args) -> int:
    try:
        cfg, _ = _load(args.recipe, args.overrides)
    except recipes.RecipeError as exc:
        print(f"ftkit: invalid recipe {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not _checked(cfg, args.recipe, cfg.stages):
        return EXIT_INVALID
    print(f"{args.recipe}: valid (stages: {', '.join(cfg.stages)})")
    return 0


def _resume(args) -> int:
    if not _is_run_dir(args.run_dir):
        return EXIT_INVALID
    args.recipe, args.overrides, args.sweep = str(rundir.path(args.run_dir, rundir.RECIPE)), [], None
    return _run(args)


def _run(args) -> int:
    from ftkit.run import runner

    try:
        cfg, stages = _load(args.recipe, args.overrides, args.stages)
        variants = _sweep(args) if args.sweep else None
    except recipes.RecipeError as exc:
        print(f"ftkit: invalid recipe {exc}", file=sys.stderr)
        return EXIT_INVALID
    todo = stages if variants else runner.plan(cfg, args.run_dir, stages, args.force)  # not up to date in --run-dir
    if not _checked(cfg, args.recipe, todo):
        return EXIT_INVALID
    if variants:
        return _run_sweep(args, variants, stages)
    run_dir = Path(args.run_dir) if args.run_dir else rundir.new_run_dir(cfg.name)
    print(f"run directory: {run_dir}", flush=True)
    try:
        run_dir, results, report_path = runner.run(cfg, run_dir, stages, on_event=_print_event, force=args.force)
    except OSError as exc:  # the run directory's own files (status, report) could not be written
        print(f"ftkit: {exc}", file=sys.stderr)
        return EXIT_FAILED
    failed = next((r for r in results if not r.ok), None)
    print(f"report: {report_path}")
    _print_time(run_dir, [r.stage for r in results if r.ok])
    if failed:
        print(f"ftkit: stage {failed.stage} failed: {failed.error} — open {failed.notebook}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _chat(args) -> int:
    import json

    from ftkit.stages import chat

    if not _is_run_dir(args.run_dir):
        return EXIT_INVALID
    prompts = args.prompt or ([] if sys.stdin.isatty() else ["-"])
    from_stdin = "-" in prompts
    prompts = [line.rstrip("\n") for p in prompts for line in (sys.stdin if p == "-" else [p])]
    try:
        session = chat.open_session(args.run_dir, args.model)
    except (FileNotFoundError, ValueError) as exc:
        print(f"ftkit: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for name in ("system", "temperature", "max_new_tokens"):
        if getattr(args, name) is not None:
            setattr(session, name, getattr(args, name))
    if not args.prompt and not from_stdin:
        chat.interact(session)
        return 0
    for prompt in (p for p in prompts if p.strip()):
        session.reset()
        reply = session.reply(prompt)
        print(json.dumps({"model": session.name, "prompt": prompt, "reply": reply}) if args.jsonl or from_stdin
              else reply, flush=True)
    return 0


def _report(args) -> int:
    from ftkit.report import page

    if not _is_run_dir(args.run_dir):
        return EXIT_INVALID
    print(page.render(args.run_dir))
    return 0


def _model(args) -> int:
    from ftkit.models import loader

    try:
        print(loader.resolve(args.id or recipes.DEFAULT_MODEL))
    except loader.ModelNotFound as exc:
        print(f"ftkit: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _compare(args) -> int:
    import datetime as dt

    from ftkit.report import compare

    if len(args.run_dirs) < 2:
        print("ftkit: compare needs at least two run directories", file=sys.stderr)
        return EXIT_INVALID
    out = (Path(args.output) if args.output
           else rundir.reports_dir() / f"compare-{dt.datetime.now():%Y%m%d-%H%M%S}.html")
    try:
        print(f"comparison: {compare.render(args.run_dirs, out)}")
    except FileNotFoundError as exc:
        print(f"ftkit: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def _sweep(args) -> list[tuple[str, object]]:
    """The --sweep variants as (assignment, value) pairs, each validated as a --set override."""
    import yaml

    key, sep, values = args.sweep.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise recipes.RecipeError("--sweep", [f"{args.sweep!r}: expected KEY=V1,V2,..., e.g. sft.learning_rate=1e-3,3e-4"])
    variants = [f"{key.strip()}={v.strip()}" for v in values.split(",") if v.strip()]
    for assignment in variants:
        recipes.load(args.recipe, [*args.overrides, assignment])
    return [(a, yaml.safe_load(a.partition("=")[2])) for a in variants]


def _run_sweep(args, variants, stages) -> int:
    """One run per value (run directories named after it), then the comparison page next to them."""
    import datetime as dt

    from ftkit.report import compare
    from ftkit.run import runner

    stamp, run_dirs, failed = f"{dt.datetime.now():%Y%m%d-%H%M%S}", [], []
    for assignment, _ in variants:
        cfg = recipes.load(args.recipe, [*args.overrides, assignment])
        run_dir = rundir.reports_dir() / cfg.name / f"{stamp}-{re.sub(r'[^A-Za-z0-9_.=,+-]', '_', assignment)}"
        print(f"▶▶ {assignment}: {run_dir}", flush=True)
        _, results, report_path = runner.run(cfg, run_dir, stages, on_event=_print_event)
        print(f"report: {report_path}")
        run_dirs.append(run_dir)
        failed += [f"{assignment}: {r.stage}" for r in results if not r.ok]
    page = compare.render(run_dirs, rundir.reports_dir() / cfg.name / f"sweep-{stamp}.html")
    print(f"comparison: {page}")
    if failed:
        print(f"ftkit: failed stages: {', '.join(failed)}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
