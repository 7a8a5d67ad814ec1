"""Scoring, beside the core: reading an answer out of a reply (`answers`), classes, the built-in tasks, the metrics
(as local `evaluate` modules), the RL rewards, the perturbations of robustness, the code sandbox and the statistics
(intervals, paired tests). Pure functions of text and numbers: no torch."""
