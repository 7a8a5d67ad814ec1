"""Recipe schema, loading, `--set` overrides and validation.

Every problem in a recipe is collected and reported at once, each with the file, the line, the dotted
key path, the value and what is allowed:

    recipes/x.yaml:12: sft.learnin_rate = 0.001: unknown key; did you mean 'learning_rate'?
"""

from ftkit.core.rundir import STAGES
from ftkit.recipe.data import DataConfig
from ftkit.recipe.reading import apply_override, build, fitted, load, open_run
from ftkit.recipe.rules import (
                                DEFAULT_MODEL,
                                DEFAULT_STAGES,
                                KEPT_RESERVED,
                                REFERENCE_REWARDS,
                                TRACKERS,
                                TUNED_MODELS,
                                RecipeError,
                                data_problem,
                                template_fields,
                                trackers,
)
from ftkit.recipe.schema import (
                                EvalConfig,
                                ExportConfig,
                                JudgeConfig,
                                LaunchConfig,
                                ModelConfig,
                                Recipe,
                                RLConfig,
                                SFTConfig,
)

__all__ = ["STAGES", "DEFAULT_MODEL", "DEFAULT_STAGES", "KEPT_RESERVED", "REFERENCE_REWARDS", "TRACKERS",
           "TUNED_MODELS", "DataConfig", "EvalConfig", "ExportConfig", "JudgeConfig", "LaunchConfig", "ModelConfig",
           "RLConfig", "Recipe", "RecipeError", "SFTConfig", "apply_override", "build", "data_problem", "load",
           "open_run", "fitted", "template_fields", "trackers"]
