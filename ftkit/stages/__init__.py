"""The stages, one per recipe section and notebook: data, sft, rl, eval, export. A stage imports the layers below,
never another stage: stages talk through the run directory's files."""
