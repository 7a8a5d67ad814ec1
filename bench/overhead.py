"""ftkit's overhead: the quickstart through `ftkit run` against a plain TRL script doing the same work.

    python bench/overhead.py [--recipe recipes/quickstart.yaml]

Runs, one after the other (never at once: two PyTorch processes on a small machine slow each other down),
(a) `ftkit run RECIPE` into a fresh run directory: four papermill notebooks, checkpoints, progress, fingerprints,
    the report; and
(b) `python bench/plain_trl.py RECIPE`: the same data, SFT, GRPO and evaluation with TRL directly.
Prints the wall time of each (whole process, model loading included), their ratio ftkit / plain (the target is at
most 1.10), the per-stage times of both and the accuracies each reached.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "ftkit"
        ftkit_seconds, _ = timed([sys.executable, "-m", "ftkit", "run", args.recipe, "--run-dir", str(run_dir)])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        status = json.loads((run_dir / "status.json").read_text())
        plain_seconds, printed = timed([sys.executable, "bench/plain_trl.py", args.recipe, str(Path(tmp) / "plain")])
        plain = json.loads(printed.strip().splitlines()[-1])
    stages = {name: entry["duration_s"] for name, entry in status.items()}
    accuracy = {name: result[result["metric"]] for name, result in metrics.get("eval", {}).items()
                if isinstance(result, dict) and "metric" in result}
    out = {"recipe": args.recipe, "ftkit_seconds": round(ftkit_seconds, 1), "plain_seconds": round(plain_seconds, 1),
           "ratio": round(ftkit_seconds / plain_seconds, 3), "ftkit_stages": stages,
           "plain_phases": plain["seconds"], "ftkit_accuracy": accuracy,
           "plain_accuracy": {name: r["test"] for name, r in plain["results"].items()}}
    print(f"ftkit run {args.recipe}: {out['ftkit_seconds']} s  (stages: {stages})")
    print(f"plain TRL script:       {out['plain_seconds']} s  (phases: {plain['seconds']})")
    print(f"ratio ftkit / plain: {out['ratio']}   (target <= 1.10)")
    print(f"accuracy ftkit {accuracy}, plain {out['plain_accuracy']}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
