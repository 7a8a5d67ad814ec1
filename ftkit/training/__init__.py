"""Training plumbing, shared by the SFT and RL stages: the trainer's arguments, checkpoints and resume (`trainer`),
the memory estimate before a run (`preflight`) and several processes through `accelerate launch` (`launch`)."""
