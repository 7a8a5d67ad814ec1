"""Reading files and hub datasets into (place, record) pairs: JSONL, JSON, CSV, TSV and Parquet, one reader per
file type; a place names the file and the line or row, for every error message after this."""

from __future__ import annotations

import glob
import json
from pathlib import Path

from ftkit.core.rows import DataError


def expand(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise DataError(f"{pattern}: no file matches; check data.path (relative paths start at the recipe's folder)")
    return files


def _text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); re-save the file as UTF-8") from None


def _jsonl(path: Path) -> list[tuple[str, dict]]:
    records = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{path}:{number}", json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: malformed JSON ({exc.msg} at column {exc.colno}); "
                            "fix or delete this line") from None
    return records


def _json(path: Path) -> list[tuple[str, dict]]:
    try:
        loaded = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}); a .json file must hold one list of "
                        "objects (use .jsonl for one object per line)") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("data"), list):
        loaded = loaded["data"]
    if not isinstance(loaded, list):
        raise DataError(f"{path}: expected a list of objects, found a {type(loaded).__name__}")
    return [(f"{path} item {i}", r) for i, r in enumerate(loaded)]


def _parquet(path: Path) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
    records = [(f"{path} row {i}", r) for i, r in enumerate(table.to_pylist())]
    if b"huggingface" in (table.schema.metadata or {}):  # written by datasets: its ClassLabel names travel along
        from datasets import Features

        records = named_classes(records, class_names(Features.from_arrow_schema(table.schema)))
    return records


def _table(path: Path) -> list[tuple[str, dict]]:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                            encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the file as UTF-8") from None
    except Exception as exc:
        raise DataError(f"{path}: cannot be read as {suffix[1:].upper()} ({exc})") from None
    return [(f"{path}:{i + 2}", r) for i, r in enumerate(frame.to_dict(orient="records"))]


READERS = {".jsonl": _jsonl, ".ndjson": _jsonl, ".json": _json, ".parquet": _parquet, ".csv": _table, ".tsv": _table}


def read_records(path: Path) -> list[tuple[str, dict]]:
    """(place, record) pairs from one file; place is 'file:line' (JSONL, CSV) or 'file item N' / 'file row N'."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type {path.suffix.lower()!r}; use .jsonl, .json, .csv, .tsv or .parquet")
    records = reader(path)
    for place, record in records:
        if not isinstance(record, dict):
            raise DataError(f"{place}: expected an object with named fields, found {type(record).__name__}")
    return records


def class_names(features) -> dict[str, list[str]]:
    """Column -> class names, for the columns a `datasets` Features declares as ClassLabel, or a list of them
    (multi-label: GoEmotions' labels), in a hub dataset or a Parquet file written by `datasets`: there the data holds
    class numbers and the names live in the features."""
    from datasets import ClassLabel

    def labels(feature):
        inner = getattr(feature, "feature", None)  # a List (Sequence) of ClassLabel
        return feature if isinstance(feature, ClassLabel) else inner if isinstance(inner, ClassLabel) else None

    return {column: list(labels(f).names) for column, f in (features or {}).items() if labels(f) is not None}


def named_classes(records: list[tuple[str, dict]], names: dict[str, list[str]]) -> list[tuple[str, dict]]:
    """Records with each ClassLabel column's class numbers replaced by their names (in a list of them too: a
    multi-label row's labels become several acceptable answers); -1, datasets' "no label" (GLUE's test splits),
    becomes None, so such a row counts as one without its answer.

    >>> named_classes([("x", {"text": "fine", "label": 1}), ("y", {"text": "?", "label": -1})],
    ...               {"label": ["negative", "positive"]})
    [('x', {'text': 'fine', 'label': 'positive'}), ('y', {'text': '?', 'label': None})]
    >>> named_classes([("x", {"labels": [2, 0]})], {"labels": ["joy", "anger", "fear"]})
    [('x', {'labels': ['fear', 'joy']})]
    """
    def name(value, classes):
        if isinstance(value, list):
            return [n for n in (name(v, classes) for v in value) if n is not None]
        if isinstance(value, int) and not isinstance(value, bool):
            return classes[value] if 0 <= value < len(classes) else None if value == -1 else value
        return value

    if not names:
        return records
    return [(p, {k: name(v, names[k]) if k in names else v for k, v in r.items()}) for p, r in records]


def label_name(answer: str, names: dict[str, str], place: str) -> str:
    """An answer given as a class number, by data.label_names (number -> name); an answer that is already one of
    the names stays.

    >>> names = {"0": "negative", "1": "positive"}
    >>> label_name("1", names, "x"), label_name("1.0", names, "x"), label_name("negative", names, "x")
    ('positive', 'positive', 'negative')
    """
    if answer in names:
        return names[answer]
    if answer in names.values():
        return answer
    try:
        number = float(answer)
    except ValueError:
        number = None
    if number is not None and number.is_integer() and str(int(number)) in names:
        return names[str(int(number))]
    raise DataError(f"{place}: the answer {answer!r} is not a class of data.label_names ({', '.join(names)}, or the "
                    f"names {', '.join(sorted(set(names.values())))}); fix the row, or add its class to label_names")


def read_hub(dataset_id: str, subset: str | None, split_name: str, revision: str | None) -> list[tuple[str, dict]]:
    """Records of a Hugging Face Hub dataset split, through `datasets`."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id, subset, split=split_name, revision=revision)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"hub dataset {dataset_id!r} (subset {subset!r}, split {split_name!r}) could not be loaded: "
                        f"{type(exc).__name__}: {detail}. If the Hugging Face hub cannot be reached from here, save "
                        "the data where it can (load_dataset(...).to_json('data.jsonl')), copy the file over and set "
                        "data.path to it (and data.hub to null)") from None
    return named_classes([(f"{dataset_id}[{split_name}] row {i}", dict(r)) for i, r in enumerate(dataset)],
                         class_names(dataset.features))
