"""Training on several processes or machines: the recipe's `launch:` section, carried out by `accelerate launch`.

With one process (the default) SFT and RL train inside the notebook's kernel. With more, the stage runs

    accelerate launch --num_processes N [--num_machines M --machine_rank R --main_process_ip IP ...]
                      [--config_file FSDP-or-DeepSpeed.yaml | --multi_gpu] -m ftkit.STAGE RUN_DIR

as a subprocess (STAGE is sft or rl: the stage module run as a script calls `inside`): each process loads the recipe
from the run directory and trains its share of every batch (DDP, or whatever the accelerate config file says); the
first process saves the result and writes its figures to `<stage>/train_result.json`. The subprocess's output
streams into the notebook and into `<stage>/launch.log`, and a non-zero exit raises with the end of that log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ftkit import recipe
from ftkit.core import rundir, timing
from ftkit.core.io import CommandFailed, read_json, redact, write_atomic

INSIDE = "FTKIT_LAUNCHED"  # set in the launched processes, so that they train instead of launching again


def needed(cfg) -> bool:
    """True when the recipe asks for more than one process and this is not already one of them."""
    return ((cfg.launch.num_processes > 1 or cfg.launch.num_machines > 1 or cfg.launch.shard != "none")
            and not os.environ.get(INSIDE))


def command(cfg, stage: str, run_dir: str | Path) -> list[str]:
    launch = cfg.launch
    args = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(launch.num_processes),
            "--num_machines", str(launch.num_machines), "--machine_rank", str(launch.machine_rank),
            "--mixed_precision", launch.mixed_precision, "--dynamo_backend", "no"]
    if launch.num_machines > 1:
        args += ["--main_process_ip", launch.main_process_ip, "--main_process_port", str(launch.main_process_port)]
    if launch.shard != "none":
        args += ["--config_file", str(write_shard_config(cfg, stage, run_dir))]
    else:
        args += ["--config_file", launch.config_file] if launch.config_file else ["--multi_gpu"]
    return [*args, "-m", f"ftkit.stages.{stage}", str(Path(run_dir).resolve())]


def write_shard_config(cfg, stage: str, run_dir: str | Path) -> Path:
    """The accelerate config for `launch.shard`, written to `<stage>/accelerate.yaml`; either way full state dicts
    are gathered for saving, so the checkpoints and the saved adapter or model are the usual files that resume, merge
    and export read (run on 2 CPU processes by tests/test_fsdp.py).

    fsdp: FSDP2 sharding each decoder layer (accelerate finds the class from the model's `_no_split_modules`) and the
    rest, resharded after the forward pass; the first process alone reads the weights (into host memory, not onto its
    GPU; the others build the model's shapes on the meta device: `loader.receives_shards`) and sends out the shards
    (accelerate's cpu-RAM-efficient loading).
    zero3: DeepSpeed ZeRO-3, nothing offloaded; every process reads the weights into host memory and keeps its
    partition when training starts."""
    import yaml

    launch = cfg.launch
    settings = {"compute_environment": "LOCAL_MACHINE", "mixed_precision": "no",
                "num_processes": launch.num_processes, "num_machines": launch.num_machines,
                "machine_rank": launch.machine_rank, "use_cpu": False}
    if launch.shard == "fsdp":
        settings |= {"distributed_type": "FSDP",
                     "fsdp_config": {"fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                                     "fsdp_reshard_after_forward": True, "fsdp_cpu_ram_efficient_loading": True,
                                     "fsdp_sync_module_states": True, "fsdp_state_dict_type": "FULL_STATE_DICT",
                                     "fsdp_offload_params": False, "fsdp_activation_checkpointing": False}}
    else:
        settings |= {"distributed_type": "DEEPSPEED",
                     "deepspeed_config": {"zero_stage": 3, "zero3_init_flag": False, "zero3_save_16bit_model": True,
                                          "offload_optimizer_device": "none", "offload_param_device": "none"}}
    path = rundir.stage_file(run_dir, stage, rundir.ACCELERATE_CONFIG)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, yaml.safe_dump(settings, sort_keys=False))
    return path


def threads_per_process(cfg) -> int:
    """CPU threads for each process: the cores shared out, at least one (two PyTorch processes that each take every
    core run several times slower than one)."""
    machines = max(cfg.launch.num_machines, 1)
    return max(1, (os.cpu_count() or 1) // max(cfg.launch.num_processes // machines, 1))


def train(cfg, run_dir: str | Path, stage: str) -> dict:
    """Run `stage`'s training in `cfg.launch.num_processes` processes; return the first process's figures."""
    log_path = rundir.stage_file(run_dir, stage, rundir.LAUNCH_LOG)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    result = rundir.stage_file(run_dir, stage, rundir.TRAIN_RESULT)
    result.unlink(missing_ok=True)
    env = {**os.environ, INSIDE: "1", "OMP_NUM_THREADS": str(threads_per_process(cfg))}
    cmd = command(cfg, stage, run_dir)
    tail: list[str] = []
    with open(log_path, "w") as log, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, bufsize=1) as proc:
        log.write(redact(" ".join(cmd)) + "\n")
        for line in proc.stdout:
            line = redact(line)
            log.write(line)
            log.flush()
            print(line, end="", flush=True)  # streams into the notebook's output
            tail = (tail + [line.rstrip()])[-8:]
    if proc.returncode != 0:
        raise CommandFailed(f"{stage} training in {cfg.launch.num_processes} processes failed (exit code "
                            f"{proc.returncode}); the end of {log_path}:\n" + "\n".join(tail))
    if not result.is_file():
        raise CommandFailed(f"{stage} training in {cfg.launch.num_processes} processes exited without writing "
                            f"{result}; see {log_path}")
    figures = read_json(result)
    for name, seconds in figures.pop("phases", {}).items():  # the first process's, as phases of this stage
        timing.add(name, seconds)
    return figures


def inside(stage: str, train, argv: list[str] | None = None) -> None:
    """What each launched process runs (`python -m ftkit.<stage> RUN_DIR`): the stage's `train` on the run's recipe;
    the first process records the figures for the notebook that launched them."""
    (run_dir,) = argv or sys.argv[1:]
    os.environ[INSIDE] = "1"
    cfg = recipe.load(rundir.path(run_dir, rundir.RECIPE))
    figures = train(cfg, run_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        figures = {**figures, "phases": timing.seconds()}
        write_atomic(rundir.stage_file(run_dir, stage, rundir.TRAIN_RESULT), json.dumps(figures, indent=2))
