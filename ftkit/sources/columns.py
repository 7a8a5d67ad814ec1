"""From records to rows: data.columns applied (a column, a field inside one, or a template of several), the format
converted, and what a row carries besides (data.split_by's group, data.keep_columns, data.label_names)."""

from __future__ import annotations

import string
from collections import Counter

from ftkit.core.rows import DataError
from ftkit.recipe import template_fields
from ftkit.sources.formats import _plain_list, counted_from, detect_format, normalize
from ftkit.sources.readers import expand, label_name, read_records


def _value_kind(value) -> str | None:
    """A kept column's value as a type a dataset column can hold (None for a missing value, which any type allows).

    >>> [_value_kind(v) for v in (3, 2.5, "3", True, None, [1])]
    ['number', 'number', 'string', 'bool', None, 'list']
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


_ABSENT = object()


def _nested(record: dict, path: str):
    """A column, or a field inside one by a dotted path (`answers.text`, SQuAD's); _ABSENT where there is none.

    >>> _nested({"answers": {"text": ["Paris"]}}, "answers.text"), _nested({"a": 1}, "a.b") is _ABSENT
    (['Paris'], True)
    """
    if path in record:
        return record[path]
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return _ABSENT
        value = value[key]
    return value


def _filled(record: dict, template: str, place: str) -> str:
    """A data.columns template with this record's values in place of its columns; "" where one of them is missing
    or empty, so that the row is dropped and counted (empty_field) rather than trained on with a hole in it.

    >>> _filled({"Country": "Aruba", "info": {"region": "Americas"}}, "{Country} ({info.region})?", "x")
    'Aruba (Americas)?'
    >>> _filled({"Country": "", "info": {}}, "{Country}?", "x")
    ''
    """
    values = {}
    for name in template_fields(template):
        value = _nested(record, name)
        if value is _ABSENT:
            raise DataError(f"{place}: the template {template!r} names {name!r}, which is not a column here; the "
                            f"columns are {sorted(record)}: fix the template, or fill this row")
        if isinstance(value, (dict, list)):
            inside = f"an object with the fields {sorted(value)}" if isinstance(value, dict) else "a list"
            raise DataError(f"{place}: the template {template!r} names {name!r}, which holds {inside}, not text; "
                            f"name a text inside it, e.g. {{{name}.<field>}}")
        if value is None or not str(value).strip():
            return ""
        values[name] = str(value)
    return "".join(text + (values[name] if name is not None else "")
                   for text, name, _, _ in string.Formatter().parse(template))


def _mapped(record: dict, columns: dict, named: list[str], place: str) -> dict:
    """A record with data.columns applied: each ftkit field takes its column's value (a mapped column wins over an
    unmapped one of the same name, as COPA's `question` when its premise is mapped onto question), and a list of
    option columns becomes the list of choices; empty options at the end (a question with fewer options than the
    columns) are left out.

    >>> _mapped({"goal": "Open a jar", "sol1": "twist", "sol2": "lick", "label": 0},
    ...         {"question": "goal", "choices": ["sol1", "sol2"]}, ["goal", "sol1", "sol2"], "x")
    {'label': 0, 'question': 'Open a jar', 'choices': ['twist', 'lick']}
    """
    out = {k: v for k, v in record.items() if k not in columns and k not in named}
    for name, path in columns.items():
        if not isinstance(path, list):
            value = _filled(record, path, place) if template_fields(path) else _nested(record, path)
            if value is not _ABSENT:  # else the format's check names the missing column
                out[name] = value
            continue
        values = [_nested(record, column) for column in path]
        while values and values[-1] in (None, "", _ABSENT):
            values.pop()
        missing = [c for c, v in zip(path, values) if v is _ABSENT or v is None]
        if missing:
            raise DataError(f"{place}: the option column {missing[0]!r} is missing or empty here, before the "
                            f"last option; fill it, or drop this row")
        out[name] = values
    return out


def _columns_applied(records: list[tuple[str, dict]], columns: dict) -> list[tuple[str, dict]]:
    """Every record with data.columns applied, after checking the first one has the columns they name."""
    # a mapped column leaves the record under its own name; a template's columns stay (a reward may keep one)
    named = [c for path in columns.values() if not template_fields(path)
             for c in (path if isinstance(path, list) else [path])]
    used = named + [c for path in columns.values() for c in template_fields(path) or []]
    absent = [c for c in used if _nested(records[0][1], c) is _ABSENT]
    if absent:
        raise DataError(f"{records[0][0]}: data.columns names {absent[0]!r}, which is not a column here; "
                        f"the columns are {sorted(records[0][1])} (a field inside one: <column>.<field>)")
    return [(p, _mapped(r, columns, named, p)) for p, r in records]


def _kept(row: dict, record: dict, keep, place: str, seen_kinds: dict) -> None:
    """The row carries data.keep_columns' columns in its "extra", each of one type in every row (`seen_kinds`
    remembers each column's first type): the RL stage hands them to TRL as Arrow columns."""
    absent = [c for c in keep if c not in record]
    if absent:
        raise DataError(f"{place}: data.keep_columns names {absent[0]!r}, which this row lacks; the columns "
                        f"are {sorted(record)}: add it, or remove it from data.keep_columns")
    row["extra"] = {c: record[c] for c in keep}
    for column in keep:
        kind_here = _value_kind(record[column])
        first_kind = seen_kinds.setdefault(column, (kind_here, place)) if kind_here else None
        if first_kind and first_kind[0] != kind_here:
            raise DataError(f"{place}: data.keep_columns column {column!r} holds a {kind_here} here and a "
                            f"{first_kind[0]} at {first_kind[1]}; give it one type in every row (e.g. all strings)")


def _texts_only(row: dict, columns: dict, place: str) -> None:
    """The row's text fields as text: an object or a list is an error that names the dotted path to the text
    inside it (never the object's repr as text); a number becomes its text, a null an empty text."""
    for field in ("prompt", "answer", "rejected", "system", "text"):
        if isinstance(row.get(field), (dict, list)):
            value, column = row[field], columns.get(field, field)
            texts = [k for k, v in value.items() if isinstance(v, str) or isinstance(v, list) and v
                     and all(isinstance(x, str) for x in v)] if isinstance(value, dict) else []
            what = f"an object with the fields {sorted(value)}" if isinstance(value, dict) else "a list"
            raise DataError(f"{place}: the {field} is {what}, not text; name the text inside it with a dotted "
                            f"path, e.g. data.columns: {{{field}: {column}.{texts[0] if texts else '<field>'}}}")
        if field in row and not isinstance(row[field], str):
            row[field] = "" if row[field] is None else str(row[field])


def _named_labels(row: dict, label_names: dict[str, str], place: str) -> None:
    """An answer given as a class number becomes its name (data.label_names); a multi-label row's numbers too."""
    row["answer"] = label_name(row["answer"].strip(), label_names, place)
    if row.get("accepted"):
        row["accepted"] = list(dict.fromkeys(label_name(a, label_names, place) for a in row["accepted"]))


def normalize_records(records: list[tuple[str, dict]], fmt: str, columns: dict[str, str],
                      drops: Counter, group: str | None = None, keep=(),
                      label_names: dict[str, str] | None = None) -> list[tuple[str, dict]]:
    """Rename mapped columns, detect the format from the first record, normalize every record to a row; with
    `group` (data.split_by naming a column) the row keeps that column's value as its "group", each column named
    in `keep` (data.keep_columns) goes along in the row's "extra", and with `label_names` (data.label_names) an
    answer given as a class number becomes its name."""
    if not records:
        return []
    columns = columns or {}
    if columns:
        records = _columns_applied(records, columns)
    if "accepted" not in columns:  # a column of the data's own by that name counts only as a list of texts
        records = [(p, {k: v for k, v in r.items() if k != "accepted" or _plain_list(v)}) for p, r in records]
    if group and columns:
        group = {v: k for k, v in columns.items() if isinstance(v, str)}.get(group, group)
    source_format = detect_format(records[0][1], records[0][0]) if fmt == "auto" else fmt
    first_index = counted_from(records) if source_format == "multiple_choice" else 0
    if first_index:
        print(f"{records[0][0]}: the answers count the options from 1 (none is 0, and some name the last option): "
              "answer 1 is option A")
    rows, seen_kinds = [], {}
    for place, record in records:
        row = normalize(record, source_format, place, first_index)
        if isinstance(row, str):
            drops[row] += 1
            continue
        if group:
            if record.get(group) in (None, ""):
                raise DataError(f"{place}: data.split_by names the column {group!r}, which this row lacks or leaves "
                                f"empty; the columns are {sorted(record)}: fill it, or split_by: ngram")
            row["group"] = str(record[group])
        if keep:
            _kept(row, record, keep, place, seen_kinds)
        _texts_only(row, columns, place)
        if label_names and row.get("answer"):
            _named_labels(row, label_names, place)
        rows.append((place, row))
    return rows


def load_files(pattern: str, fmt: str, columns: dict[str, str], group: str | None = None,
               keep=(), label_names: dict[str, str] | None = None) -> tuple[list[tuple[str, dict]], Counter]:
    """Read and normalize every file matching `pattern`; returns ((place, row) pairs, drop counts)."""
    rows, drops = [], Counter()
    for path in expand(pattern):
        rows += normalize_records(read_records(path), fmt, columns, drops, group, keep, label_names)
    return rows, drops
