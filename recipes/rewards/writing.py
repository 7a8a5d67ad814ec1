"""Rewards for recipes/constrained-writing.yaml: a reply is judged on its own, against the constraints its prompt set
(data.keep_columns passes them by name), with no reference answer to imitate.

`recipes/data/writing_prompts.jsonl` is `prompts(320, seed=5)`.
"""

import random
import re

TOPICS = ["the ocean", "a busy city", "winter mornings", "an old library", "learning to swim", "mountain hiking",
          "a small bakery", "the night sky", "a rainy afternoon", "public trains", "a garden in spring", "cooking pasta",
          "a football match", "desert travel", "a quiet village", "the first day of school", "playing the piano",
          "a thunderstorm", "autumn leaves", "a crowded market", "riding a bicycle", "a lighthouse", "coffee shops",
          "the moon landing", "a birthday party", "fishing at dawn", "an airport", "a snowy forest",
          "street musicians", "a museum visit"]
WORDS = ["bright", "silent", "quickly", "orange", "whisper", "ancient", "gentle", "river", "laugh", "golden", "shadow",
         "brave", "window", "warm", "journey", "clock", "soft", "dream", "stone", "music"]


def prompts(n: int, seed: int) -> list[dict]:
    """`n` writing prompts: a topic, a word to use and a word limit, the last two kept as columns for the reward."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topic, word, limit = rng.choice(TOPICS), rng.choice(WORDS), rng.choice([8, 10, 12])
        rows.append({"prompt": f'Write one sentence about {topic} that uses the word "{word}". Use at most {limit} '
                               "words.", "word": word, "max_words": limit})
    return rows


def constraints(completions, word, max_words, **kwargs):
    """0.5 for using the word asked for (as a word of its own, any case), 0.5 for saying something within the word
    limit.

    >>> constraints(["A bright sky.", "Brightly lit.", "So bright and clear and wide it was."], ["bright"] * 3, [3] * 3)
    [1.0, 0.5, 0.5]
    """
    scores = []
    for completion, wanted, limit in zip(completions, word, max_words):
        text = completion[-1]["content"] if isinstance(completion, list) else completion
        words = re.findall(r"[A-Za-z']+", text)
        scores.append(0.5 * any(w.lower() == wanted.lower() for w in words) + 0.5 * (0 < len(words) <= int(limit)))
    return scores


if __name__ == "__main__":
    import json
    from pathlib import Path

    out = Path(__file__).parents[1] / "data" / "writing_prompts.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in prompts(320, seed=5)))
