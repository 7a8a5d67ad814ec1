"""Where the data comes from: local files (JSONL, JSON, CSV, TSV, Parquet; globs allowed) and Hugging Face Hub
datasets, read and normalized from any of the formats below to ftkit's rows (`ftkit.core.rows`).

Formats: prompt/completion, question/answer, multiple choice (a question, its options and the right one), Alpaca
(instruction, input, output; also Dolly's instruction, context, response), chat messages (role/content, the content
a string or a list of text parts), ShareGPT conversations (from/value), preference pairs (prompt, chosen, rejected;
or chosen and rejected conversations that share their beginning, as in Anthropic's HH), prompts alone (for RL whose
rewards need no reference answer) and plain text; `data.columns` maps other column names onto these, and
`data.keep_columns` carries more of them along on each row (as `extra`, for a reward to read). Every problem raises
`DataError` naming the file, the line and the fix.
"""

from __future__ import annotations

from collections import Counter

from ftkit.sources.columns import load_files, normalize_records
from ftkit.sources.formats import FORMATS, detect_format, multiple_choice, normalize
from ftkit.sources.readers import read_hub, read_records

__all__ = ["FORMATS", "detect_format", "load_files", "load_source", "multiple_choice", "normalize",
           "normalize_records", "read_hub", "read_records", "sources"]


def sources(data_cfg) -> dict[str, float]:
    """The recipe's file and hub sources with their weights: data.mix, or the one data.path / data.hub."""
    if data_cfg.mix:
        return dict(data_cfg.mix)
    return {data_cfg.path if data_cfg.path else f"hub:{data_cfg.hub}": 1.0}


def load_source(name: str, data_cfg, own_test: bool = False) -> tuple[list[tuple[str, dict]], Counter]:
    """Normalized rows of one source (a file pattern or hub:<id>); its own test split when `own_test`."""
    group = data_cfg.split_by if data_cfg.split_by != "ngram" else None
    if name.startswith("hub:"):
        split_name = data_cfg.test_split if own_test else data_cfg.split
        records = read_hub(name.removeprefix("hub:"), data_cfg.subset, split_name, data_cfg.revision)
        drops = Counter()
        return normalize_records(records, data_cfg.format, data_cfg.columns, drops, group,
                                 data_cfg.keep_columns, data_cfg.label_names), drops
    return load_files(data_cfg.test_path if own_test else name, data_cfg.format, data_cfg.columns, group,
                      data_cfg.keep_columns, data_cfg.label_names)
