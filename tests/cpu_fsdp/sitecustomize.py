"""Put on PYTHONPATH by tests/test_fsdp.py for the processes `accelerate launch` starts: lifts accelerate's rule that
FSDP runs only on GPU-like devices, so that FSDP2 (torch's fully_shard, which runs on CPUs over gloo) shards the model
over CPU processes. Everything else -- accelerate's FSDP2 preparation, transformers' loading, ftkit's saving -- runs
as it would on GPUs."""

import os

if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
    from accelerate import state
    from accelerate.utils import DistributedType

    _init = state.AcceleratorState.__init__

    def _init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    state.AcceleratorState.__init__ = _init_with_fsdp_on_cpu

if os.environ.get("FTKIT_TEST_FAIL_AT_STEP"):  # a run that dies in this step (after the checkpoints before it)
    import transformers

    _step = transformers.Trainer.training_step

    def _failing_step(self, *args, **kwargs):
        if self.state.global_step + 1 == int(os.environ["FTKIT_TEST_FAIL_AT_STEP"]):
            raise SystemExit(f"stopped by the test in step {self.state.global_step + 1}")
        return _step(self, *args, **kwargs)

    transformers.Trainer.training_step = _failing_step
