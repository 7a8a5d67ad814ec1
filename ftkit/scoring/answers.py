"""Reading the answer out of a reply: one concept shared by the task scorers, the rewards and eval.

A recipe says where a reply's answer is with `data.extract` (a built-in task brings its own):

    exact         the whole reply (case, spacing and a trailing '.' or '!' aside)
    first_number  the first number in the reply ("68", "68 apples")
    last_number   the last number (worked solutions that end with the result)
    after_hash    what follows the last '####' (GSM8K's "... #### 42")
    boxed         what is inside the last \\boxed{...}
    regex         the first group of `data.extract_regex` (else its whole match)

The reference answer is read the same way when it carries the marker (a GSM8K reference ends with "#### 42"); a
plain reference ("42") is taken whole. Numbers compare as numbers ("42.0" is "42", "1,000" is "1000"), and within
`data.numeric_tolerance` when the recipe sets one (a reply of 77.5 for a reference of 77.4 is right within 0.5).

`strict` scores the answer where the format says it is; `lenient` finds the right answer anywhere in the reply, so
that a reader can tell learning the format from learning the task (a number the reply only repeats from the question
does not count: "15 / 3 = 5" has not found an answer of 3); `distance`, for numeric answers, how far off a
wrong number is (progress that a right-or-wrong score hides). Each takes one reference answer or a list of acceptable
ones (SQuAD's several spans, TriviaQA's aliases): a reply is right when it gives any of them, and as far off as the
nearest.
"""

from __future__ import annotations

import re

MODES = ("exact", "first_number", "last_number", "after_hash", "boxed", "regex")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_VALUE = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")  # a number as `normalize` writes it


def numbers(text: str) -> list[str]:
    """The numbers in a text, thousands separators removed.

    >>> numbers("He paid $1,250.50 for 3 items, -2 each")
    ['1250.50', '3', '-2']
    """
    return [n.replace(",", "") for n in _NUMBER.findall(text) if any(c.isdigit() for c in n)]


def _boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract(text: str, mode: str, pattern: str | None = None) -> str | None:
    """The answer in `text` where `mode` says it is (None when it is not there).

    >>> extract("First 3 + 4 = 7, then 7 * 2 = 14. #### 14", "after_hash"), extract("so \\\\boxed{\\\\frac{1}{2}}", "boxed")
    ('14', '\\\\frac{1}{2}')
    >>> extract("12 + 30 = 42", "first_number"), extract("12 + 30 = 42", "last_number"), extract("no digits", "last_number")
    ('12', '42', None)
    >>> extract("Answer: B) blue", "regex", r"Answer:\\s*([A-D])")
    'B'
    """
    if mode == "exact":
        return text
    if mode in ("first_number", "last_number"):
        found = numbers(text)
        return (found[0] if mode == "first_number" else found[-1]) if found else None
    if mode == "after_hash":
        return text.rsplit("####", 1)[1].strip() if "####" in text else None
    if mode == "boxed":
        return _boxed(text)
    if mode == "regex":
        found = re.search(pattern or "", text, re.DOTALL)
        return None if found is None else (found.group(1) if found.groups() else found.group(0))
    raise ValueError(f"unknown answer extraction {mode!r}; one of {', '.join(MODES)}")


def reference(answer: str, mode: str, pattern: str | None = None) -> str:
    """The reference answer itself: read with `mode` where it carries the marker, else taken whole.

    >>> reference("Half of 84 is 42. #### 42", "after_hash"), reference("42", "after_hash"), reference("#### 7", "last_number")
    ('42', '42', '7')
    """
    found = extract(answer, mode, pattern) if mode != "exact" else None
    return answer if found is None else found


def normalize(text: str) -> str:
    """Case, spacing and a trailing '.' or '!' aside; a lone number (with a currency sign or %) as its value.

    >>> normalize("  Paris. "), normalize("1,000.0"), normalize("$5"), normalize("0.50")
    ('paris', '1000', '5', '0.5')
    """
    text = " ".join(text.strip().rstrip(".!").lower().split())
    bare = text.strip("$€£% ").replace(",", "")
    if re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", bare):
        value = float(bare)
        return str(int(value)) if value.is_integer() else repr(value)
    return text


def same(a: str | None, b: str, tolerance: float = 0.0) -> bool:
    """Whether two answers are the same after `normalize`; two numbers also when they differ by at most
    `tolerance`.

    >>> same("77.5", "77.4"), same("77.5", "77.4", tolerance=0.5), same("a", "b", tolerance=1)
    (False, True, False)
    """
    if a is None:
        return False
    if normalize(a) == normalize(b):
        return True
    x, y = as_number(a), as_number(b)
    return bool(tolerance) and x is not None and y is not None and abs(x - y) <= tolerance


def alternatives(answer: str | list[str]) -> list[str]:
    """The acceptable answers: a list as it is, one answer as a list of one.

    >>> alternatives("57"), alternatives(["Paris", "City of Paris"])
    (['57'], ['Paris', 'City of Paris'])
    """
    return list(answer) if isinstance(answer, (list, tuple)) else [answer]


def strict(output: str, answer: str | list[str], mode: str, pattern: str | None = None,
           tolerance: float = 0.0) -> float:
    """1.0 when the answer read from `output` where `mode` says is the reference answer, or one of the acceptable
    ones (numbers within `tolerance`).

    >>> strict("12 + 45 = 57", "57", "first_number"), strict("12 + 45 = 57", "57", "last_number")
    (0.0, 1.0)
    >>> strict("Paris", ["City of Paris", "paris"], "exact"), strict("Lyon", ["City of Paris", "paris"], "exact")
    (1.0, 0.0)
    """
    got = extract(output, mode, pattern)
    return float(any(same(got, reference(a, mode, pattern), tolerance) for a in alternatives(answer)))


def lenient(output: str, answer: str | list[str], mode: str = "exact", pattern: str | None = None,
            tolerance: float = 0.0, question: str = "", options: dict[str, str] | None = None) -> float:
    """1.0 when the reference answer (or one of the acceptable ones) appears anywhere in `output`: as one of its
    numbers for a numeric answer (within `tolerance`), else as a whole-word phrase; and whenever `strict` is 1.0.

    A number the reply repeats from the `question` is not an answer it found: each of the question's numbers
    discounts one occurrence in the reply, so restating "15 / 3" does not score an answer of 3 while working back
    to it ("15 / 3 = 5, 5 - 2 = 3") does. Not with `mode` exact, where the answer may be quoted from a passage.

    With a multiple-choice question's `options` (label -> text), the reply must name the right option and no other:
    by its label standing alone, as written ("B", "B. Venus", "(B)"), or by its text. Listing the options is not
    choosing one, and the article "a" is not option A.

    >>> lenient("12 + 45 = 57", "57"), lenient("I think it is Paris, France.", "paris"), lenient("5700", "57")
    (1.0, 1.0, 0.0)
    >>> lenient("about 56.8 or so", "57", tolerance=0.5), lenient("It was Shakespeare.", ["William Shakespeare", "Shakespeare"])
    (1.0, 1.0)
    >>> q = "Ben has 15 shells, splits them into 3 piles and keeps one. He finds 4 more. How many now?"
    >>> lenient("15 / 3 = 5\\n#### 5", "#### 3", "after_hash", question=q), lenient("15 / 3 = 5\\n#### 5", "#### 3", "after_hash")
    (0.0, 1.0)
    >>> lenient("15 / 3 = 5, 5 + 4 = 9 so 9", "#### 9", "after_hash", question=q), lenient("#### 15", "15", "after_hash", question=q)
    (1.0, 1.0)
    >>> planets = {"A": "Mars", "B": "Venus", "C": "Jupiter"}
    >>> [lenient(reply, "B", options=planets) for reply in ("B. Venus", "It is venus", "(B)", "A. Mars B. Venus C. Jupiter")]
    [1.0, 1.0, 1.0, 0.0]
    >>> lenient("It is a planet", "A", options=planets), lenient("It is a planet", "A")
    (0.0, 1.0)
    """
    if options and not isinstance(answer, list) and answer in options:
        return _chosen(output, answer, options, mode, pattern, tolerance)
    return max((_lenient(output, a, mode, pattern, tolerance, question) for a in alternatives(answer)), default=0.0)


def _chosen(output: str, answer: str, options: dict[str, str], mode: str, pattern: str | None,
            tolerance: float) -> float:
    if strict(output, answer, mode, pattern, tolerance):
        return 1.0
    said = normalize(output)
    named = {label for label, text in options.items()
             if re.search(r"(?<!\w)" + re.escape(label) + r"(?!\w)", output)
             or (normalize(text) and re.search(r"(?<!\w)" + re.escape(normalize(text)) + r"(?!\w)", said))}
    return float(named == {answer})


def _lenient(output: str, answer: str, mode: str, pattern: str | None, tolerance: float, question: str) -> float:
    want = normalize(reference(answer, mode, pattern))
    if _VALUE.fullmatch(want):
        if strict(output, answer, mode, pattern, tolerance):
            return 1.0
        found, repeated = numbers(output), numbers(question) if mode != "exact" else []
        for number in repeated:
            copy = next((i for i, n in enumerate(found) if normalize(n) == normalize(number)), None)
            if copy is not None:
                del found[copy]
        return float(any(same(n, want, tolerance) for n in found))
    return float(re.search(r"(?<!\w)" + re.escape(want) + r"(?!\w)", normalize(output)) is not None)


def as_number(text: str | None) -> float | None:
    """A lone number's value (after `normalize`: "$1,000" is 1000), else None.

    >>> as_number("1,250.5"), as_number(" 42. "), as_number("about 4"), as_number(None)
    (1250.5, 42.0, None, None)
    """
    if text is None:
        return None
    value = normalize(text)
    return float(value) if _VALUE.fullmatch(value) else None


def distance(output: str, answer: str | list[str], mode: str, pattern: str | None = None) -> float | None:
    """How far the number read from `output` where `mode` says is from the reference answer's (the nearest of the
    acceptable ones); None when the reply has no number there (or no reference is a number).

    >>> distance("12 + 45 = 57", "60", "last_number"), distance("no idea", "60", "last_number")
    (3.0, None)
    >>> distance("it is 12", ["10", "13"], "first_number")
    1.0
    """
    got = as_number(extract(output, mode, pattern))
    wanted = [w for w in (as_number(reference(a, mode, pattern)) for a in alternatives(answer)) if w is not None]
    return None if got is None or not wanted else min(abs(got - w) for w in wanted)
