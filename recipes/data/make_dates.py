"""Writes dates.jsonl: prompt/answer pairs a user might bring, dates written the many ways people write them
("the 3rd of March, 2024", "Sun 3 Mar 2024", "2024, March 3") with the date in ISO 8601 as the answer
("2024-03-03"). Each date occurs once in the file, so no test date is seen in training in another form. Deterministic
(seeded): run it again to regenerate the shipped file.

    python recipes/data/make_dates.py
"""

import datetime as dt
import json
import random
from pathlib import Path

ROWS = 400


def ordinal(day: int) -> str:
    return f"{day}{'th' if 10 <= day % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


def written(date: dt.date, rng: random.Random) -> str:
    """One of the ways people write a date (never the ambiguous 03/04/2024)."""
    month, short = date.strftime("%B"), date.strftime("%b")
    weekday, wd = date.strftime("%A"), date.strftime("%a")
    d, y = date.day, date.year
    forms = [f"{month} {d}, {y}", f"{d} {month} {y}", f"the {ordinal(d)} of {month}, {y}", f"{short} {d} {y}",
             f"{wd} {d} {short} {y}", f"{weekday}, {month} {ordinal(d)} {y}", f"{y}, {month} {d}",
             f"{month} {ordinal(d)}, {y}", f"{d}-{short}-{y}", f"{d}.{date.month}.{y}"]
    text = rng.choice(forms)
    return text.lower() if rng.random() < 0.1 else text


def main() -> None:
    rng = random.Random(7)
    start = dt.date(1950, 1, 1)
    days = rng.sample(range((dt.date(2049, 12, 31) - start).days), ROWS)
    out = Path(__file__).with_name("dates.jsonl")
    with out.open("w") as f:
        for offset in days:
            date = start + dt.timedelta(days=offset)
            f.write(json.dumps({"prompt": written(date, rng), "answer": date.isoformat()}) + "\n")
    print(f"wrote {ROWS} rows to {out}")


if __name__ == "__main__":
    main()
