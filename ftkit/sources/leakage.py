"""Train/test leakage: how much of the test split the train split already holds (exactly, or sharing a word
8-gram of its own wording: a template's common wording set aside), and the groups that a split must keep on one side
(`data.split_by`: a column, or prompts linked by shared 8-grams)."""

from __future__ import annotations

from collections import Counter

from ftkit.core.rows import DataError, context

NGRAM = 8
COMMON_SHARE, COMMON_MIN = 0.1, 10  # an 8-gram in this share of the prompts (and at least this many) is a template's


def _grams(text: str) -> list[tuple[str, ...]]:
    """The word 8-grams of a text in order (the whole text if shorter), lower-cased."""
    words = text.lower().split()
    if len(words) <= NGRAM:
        return [tuple(words)]
    return [tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)]


def common_grams(texts: list[str]) -> dict[tuple[str, ...], int]:
    """Word 8-grams that at least a tenth of the texts (and at least 10) contain, with how many: the wording of an
    instruction or template every prompt repeats ("... degrees Celsius to Fahrenheit. Give the number only."),
    not a story told twice. The contamination check and `split_by: ngram` leave them out. A text of 8 words or
    fewer is its own gram and never common: a repeat of it is an exact duplicate.

    >>> texts = [f"Convert {c} degrees Celsius to Fahrenheit and give the number only" for c in range(20)]
    >>> common = common_grams(texts + ["a story of nine words that nobody else tells"])
    >>> sorted(common.items())[0]
    (('celsius', 'to', 'fahrenheit', 'and', 'give', 'the', 'number', 'only'), 20)
    >>> len(common), common_grams(texts[:9])
    (2, {})
    """
    counts = Counter()
    for text in texts:
        if len(text.split()) > NGRAM:
            counts.update(set(_grams(text)))
    floor = max(COMMON_MIN, COMMON_SHARE * len(texts))
    return {gram: n for gram, n in counts.items() if n >= floor}


def _own_grams(text: str, common: dict) -> list[tuple[str, ...]]:
    """The word 8-grams of a text's own wording: the words that template 8-grams (`common_grams`) cover are taken
    out first, so that a template's seven words and one of the example's do not make two examples one story. None
    where the template covers every word (a repeat of such a text is an exact duplicate).

    >>> common = {tuple("what is the iso 3166-1 alpha-3 code of".split()): 249}
    >>> _own_grams("What is the ISO 3166-1 alpha-3 code of French Polynesia?", common)
    [('french', 'polynesia?')]
    >>> _grams("What is the ISO 3166-1 alpha-3 code of French Polynesia?")[1]  # one word its own: shared by French Guiana
    ('is', 'the', 'iso', '3166-1', 'alpha-3', 'code', 'of', 'french')
    """
    if not common:
        return _grams(text)
    words = text.lower().split()
    covered = [False] * len(words)
    for i in range(len(words) - NGRAM + 1):
        if tuple(words[i:i + NGRAM]) in common:
            covered[i:i + NGRAM] = [True] * NGRAM
    own = [word for word, inside in zip(words, covered) if not inside]
    return _grams(" ".join(own)) if own else []


def _common_figures(common: dict) -> dict:
    """How many template 8-grams the check left out, and the most frequent one, for the report."""
    top = max(common.items(), key=lambda item: (item[1], item[0]))[0] if common else None
    return {"common_ngrams": len(common), "common_example": " ".join(top) if top else None}


def contamination(train: list[dict], test: list[dict], exact_only: bool = False, show: int = 5) -> dict:
    """Test examples whose conversation (earlier turns and prompt) also occurs in train: exactly, or sharing a
    word 8-gram (the whole text if shorter). `fraction` counts the n-gram overlaps, or with `exact_only` the exact
    repeats alone: a built-in task's generated problems share their template's wording by design, and the task
    guarantees that no test problem is a train problem. Wording that a tenth of all the prompts repeat (an
    instruction, a template: `common_grams`) is not counted as overlap, nor are the words it covers (`_own_grams`);
    `common_ngrams` says how many 8-grams that left out, `common_example` the most frequent. `pairs`: the first
    `show` counted ones, side by side."""
    train_texts = {context(r).strip().lower(): i for i, r in enumerate(train)}
    common = {} if exact_only else common_grams([context(r) for r in train + test])
    owner = {}
    for i, row in enumerate(train):
        for gram in _own_grams(context(row), common):
            owner.setdefault(gram, i)
    exact = overlap = 0
    pairs = []
    for row in test:
        text = context(row)
        same = train_texts.get(text.strip().lower())
        shared = next((g for g in _own_grams(text, common) if g in owner), None)
        exact += same is not None
        overlap += same is not None or shared is not None
        if len(pairs) < show and (same is not None or (shared is not None and not exact_only)):
            partner = same if same is not None else owner[shared]
            pairs.append({"test": text[:400], "train": context(train[partner])[:400],
                          "shared": "the whole prompt" if same is not None else " ".join(shared)})
    counted = exact if exact_only else overlap
    return {"exact_matches": exact, "ngram_overlaps": overlap, "ngram": NGRAM, "counted": "exact" if exact_only
            else "ngram", "fraction": round(counted / len(test), 4) if test else 0.0, **_common_figures(common),
            "pairs": pairs}


def contamination_error(source: str, figures: dict, test_size: int, limit: float) -> DataError:
    """The error for too much train/test overlap: both counts, the first pairs, and the settings that help."""
    exact, overlap, common = figures["exact_matches"], figures["ngram_overlaps"], figures.get("common_ngrams")
    template = (f"; wording that a tenth of the prompts repeat, a template's, is not counted: {common} "
                f"{'8-gram' if common == 1 else '8-grams'} such as {figures['common_example']!r}" if common else "")
    counted = (f"{exact} of {test_size} test prompts also occur in train word for word" if figures["counted"] == "exact"
               else f"{overlap} of {test_size} test prompts share a word {NGRAM}-gram with a train prompt ({exact} of "
                    f"them word for word{template})")
    shown = "".join(f"\n  test:   {p['test'][:160]!r}\n  train:  {p['train'][:160]!r}\n  shared: {p['shared']!r}"
                    for p in figures["pairs"][:3])
    return DataError(
        f"{source}: {counted}; fraction {figures['fraction']} is above data.max_contamination = {limit}. The first "
        f"pairs:{shown}\nExamples that tell one story in different words (several questions on one passage, one "
        "document in pieces) belong on one side of the split: data.split_by: ngram keeps prompts that share an "
        f"{NGRAM}-gram together, data.split_by: <column> keeps a group id together (with the data's own test split "
        "both drop the train examples grouped with a test one). Repeated prompts with different answers: remove "
        "them from the sources. If the overlap is expected, raise data.max_contamination.")


def group_keys(rows: list[dict], split_by: str | None) -> list:
    """Each row's group for the split: its own (no split_by), its "group" column value, or with "ngram" the
    connected set of rows whose prompts share a word 8-gram of their own wording (a template's words taken out:
    `_own_grams`). Raises DataError when one group would swallow most rows: no held-out split could keep it on one
    side.

    >>> rows = [{"prompt": p, "answer": "x"} for p in ("a b c d e f g h i", "z b c d e f g h i", "q")]
    >>> group_keys(rows, "ngram")
    [0, 0, 2]
    """
    if not split_by:
        return list(range(len(rows)))
    if split_by != "ngram":
        return [row["group"] for row in rows]
    parent = list(range(len(rows)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    common = common_grams([context(row) for row in rows])
    owner, link = {}, Counter()  # link: how often a gram joined two groups, for the error's example
    for i, row in enumerate(rows):
        for gram in _own_grams(context(row), common):
            j = owner.setdefault(gram, i)
            a, b = root(i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
                link[gram] += 1
    keys = [root(i) for i in range(len(rows))]
    largest = Counter(keys).most_common(1)[0][1] if rows else 0
    if len(rows) >= 10 and largest > len(rows) / 2:
        wording = " ".join(link.most_common(1)[0][0]) if link else ""
        raise DataError(f"data.split_by: ngram links {largest} of {len(rows)} examples into one group through "
                        f"shared wording such as {wording!r}, so no held-out split could keep that group on one "
                        "side: wording that many prompts repeat belongs in data.system, or a column names the "
                        "groups (data.split_by: <column>)")
    return keys


def without_test_groups(train: list[dict], test: list[dict], split_by: str | None, drops: Counter) -> list[dict]:
    """With the data's own test split: train rows that share a group with a test row are dropped and counted."""
    if not split_by:
        return train
    if split_by == "ngram":
        common = common_grams([context(row) for row in train + test])
        test_grams = {g for row in test for g in _own_grams(context(row), common)}
        kept = [r for r in train if not any(g in test_grams for g in _own_grams(context(r), common))]
    else:
        test_groups = {row["group"] for row in test}
        kept = [r for r in train if r["group"] not in test_groups]
    drops["grouped_with_test"] += len(train) - len(kept)
    return kept
