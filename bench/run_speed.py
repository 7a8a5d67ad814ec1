"""A recipe's stage times at an older commit against this checkout, back to back on this machine.

    python bench/run_speed.py [--old 63f17f8] [--new .] [--recipe recipes/quickstart.yaml] [--keep DIR]

Each side runs its own copy of the recipe. `--old` (a commit) is checked out into a temporary git worktree;
`--new` is this checkout as it stands ('.', the default: uncommitted changes included) or another commit. Each runs
`python -m ftkit run RECIPE` with its own code first on the path (the installed packages are this environment's),
old first, then new, never at once. The model copy they read is made before either starts, so neither stage pays
for it. Prints, per stage, the seconds of both and old / new; the total; where the new run's time went (its phases,
where it records them); and each evaluated model's held-out greedy score with its 95 % interval at both, and
whether the new score is inside the old interval.
The last line is the whole result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("data", "sft", "rl", "eval", "export")


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def run(tree: Path, recipe: Path, run_dir: Path) -> dict:
    """`ftkit run` with the code of `tree`; its stages' seconds, held-out scores, phases and wall time."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ftkit", "run", str(recipe), "--run-dir", str(run_dir)], cwd=tree,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"ftkit run at {tree} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    status = json.loads((run_dir / "status.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"commit": _commit(tree), "wall_s": round(wall, 1),
            "stages": {s: status[s]["duration_s"] for s in STAGES if s in status},
            "scores": scores(metrics.get("eval", {})), "phases": metrics.get("phases", {})}


def _commit(tree: Path) -> str:
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+changes" if dirty else "")


def scores(evaluated: dict) -> dict:
    """Per evaluated model: its greedy score on the held-out set and the 95 % interval, as eval recorded them."""
    out = {}
    for name, result in evaluated.items():
        if isinstance(result, dict) and "metric" in result and isinstance(result.get(result["metric"]), (int, float)):
            interval = result.get("ci95")
            out[name] = {"metric": result["metric"], "score": result[result["metric"]],
                         "ci": list(interval) if interval and None not in interval else None}
    return out


def report(old: dict, new: dict) -> dict:
    print(f"\n| stage | old {old['commit']} s | new {new['commit']} s | old / new |")
    print("|---|---|---|---|")
    ratios = {}
    for stage in STAGES:
        if stage in old["stages"] and stage in new["stages"]:
            ratios[stage] = old["stages"][stage] / new["stages"][stage]
            print(f"| {stage} | {old['stages'][stage]:.1f} | {new['stages'][stage]:.1f} | {ratios[stage]:.2f}x |")
    common = [s for s in STAGES if s in ratios]
    total_old, total_new = (sum(r["stages"][s] for s in common) for r in (old, new))
    print(f"| **stages** | **{total_old:.1f}** | **{total_new:.1f}** | **{total_old / total_new:.2f}x** |")
    print(f"\nwhole command: old {old['wall_s']} s, new {new['wall_s']} s")
    for stage, phases in new["phases"].items():
        top = sorted(phases.items(), key=lambda item: -item[1])[:4]
        print(f"new {stage}: " + ", ".join(f"{name} {s:.1f} s" for name, s in top))
    print("\n| model | metric | old score [95% CI] | new score | inside the old interval |")
    print("|---|---|---|---|---|")
    inside = {}
    for name in old["scores"]:
        if name in new["scores"]:
            o, n = old["scores"][name], new["scores"][name]
            inside[name] = bool(o["ci"]) and o["ci"][0] <= n["score"] <= o["ci"][1]
            ci = f"[{o['ci'][0]:.3f}, {o['ci'][1]:.3f}]" if o["ci"] else "(no interval)"
            print(f"| {name} | {o['metric']} | {o['score']:.3f} {ci} | {n['score']:.3f} | "
                  f"{'yes' if inside[name] else 'NO'} |")
    return {"old": old, "new": new, "speedup": round(total_old / total_new, 3), "inside_old_interval": inside}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default="63f17f8", help="the older commit (default: 63f17f8, issue 41's baseline)")
    parser.add_argument("--new", default=".", help="'.' for this checkout as it stands, or a commit")
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--keep", help="keep the worktrees and run directories under this folder")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "ftkit", "model"], cwd=ROOT, check=True, capture_output=True)
    cpu = subprocess.run([sys.executable, "-c", "from ftkit.core import machine; print(machine.describe_cpu())"],
                         cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"machine: {cpu}")
    work = Path(args.keep or tempfile.mkdtemp(prefix="ftkit-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    trees = []
    try:
        results = []
        for label, commit in (("old", args.old), ("new", args.new)):
            if commit == ".":
                tree = ROOT
            else:
                tree = work / f"tree-{label}"
                _git("worktree", "add", "--detach", "--force", str(tree), commit)
                trees.append(tree)
            recipe = (tree / args.recipe).resolve()  # each commit's own copy of the recipe
            print(f"running {args.recipe} at {label} ({_commit(tree)}) ...", flush=True)
            results.append(run(tree, recipe, work / f"run-{label}"))
        print(json.dumps(report(*results)))
    finally:
        if not args.keep:
            for tree in trees:
                _git("worktree", "remove", "--force", str(tree))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
