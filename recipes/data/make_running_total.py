"""Writes running_total.jsonl: short multi-turn chats in the OpenAI messages form, in which a shopper lists
purchases over two to four turns and the assistant keeps the running total; the last turn asks for the total, for
what one earlier purchase came to, or for how many purchases there were. Every assistant turn is a demonstration
(recipes/chat-sft.yaml trains on all of them); the last answer is held in the earlier turns (the total in the last
reply, a purchase's cost in the reply to it, the count in the number of turns), so the test set measures whether the
model finds it there. Deterministic (seeded): run it again to regenerate the shipped file.

    python recipes/data/make_running_total.py
"""

import json
import random
from pathlib import Path

ITEMS = ["apples", "pears", "eggs", "rolls", "lemons", "onions", "carrots", "bananas", "peaches", "plums", "candles",
         "pencils", "notebooks", "stamps", "batteries", "socks", "cups", "plates", "spoons", "towels"]
SINGLE = ["a loaf of bread", "a jar of honey", "a bag of rice", "a bottle of oil", "a box of tea", "a pack of coffee",
          "a wedge of cheese", "a bunch of flowers", "a tin of beans", "a melon"]
OPENERS = ["I bought {n} {item} at {p} dollars each.", "I got {n} {item}, {p} dollars apiece.",
           "First, {n} {item} at {p} dollars each."]
MORE = ["Then {n} {item} at {p} dollars each.", "Add {n} {item} for {p} dollars each.",
        "I also took {n} {item}, {p} dollars apiece."]
ONE = ["Add {item} for {p} dollars.", "Then {item}, {p} dollars.", "I also picked up {item} for {p} dollars."]
ASK = ["What is the total now?", "How much is that altogether?", "So what do I owe in total?"]
ITEM_ASK = ["How much did the {item} come to?", "What did I spend on the {item}?"]
COUNT_ASK = ["How many purchases is that?", "How many things have I bought so far?"]
SYSTEM = "You keep a shopper's running total. Answer in one short sentence."


def purchase(rng: random.Random, first: bool) -> tuple[str, int, str]:
    """A purchase's words, what it costs, and how the shopper would name it later."""
    if not first and rng.random() < 0.4:
        price, item = rng.randint(2, 9), rng.choice(SINGLE)
        return rng.choice(ONE).format(item=item, p=price), price, item.split(" of ")[-1].removeprefix("a ")
    n, price, item = rng.randint(2, 6), rng.randint(2, 5), rng.choice(ITEMS)
    return rng.choice(OPENERS if first else MORE).format(n=n, item=item, p=price), n * price, item


def question(rng: random.Random, bought: list[tuple[str, int]], total: int) -> tuple[str, str]:
    """The last turn: the total, one purchase's cost (named once in the conversation), or the number of purchases."""
    kind = rng.choice(["total", "item", "count"])
    named = [(item, cost) for item, cost in bought if [i for i, _ in bought].count(item) == 1]
    if kind == "item" and named:
        item, cost = rng.choice(named)
        return rng.choice(ITEM_ASK).format(item=item), f"{cost} dollars"
    if kind == "count":
        return rng.choice(COUNT_ASK), f"{len(bought)} purchases"
    return rng.choice(ASK), f"{total} dollars"


def conversation(rng: random.Random) -> list[dict]:
    messages, total, bought = [{"role": "system", "content": SYSTEM}], 0, []
    for turn in range(rng.randint(2, 4)):
        text, cost, item = purchase(rng, turn == 0)
        total += cost
        bought.append((item, cost))
        reply = (f"That is {cost} dollars so far." if turn == 0
                 else f"That adds {cost} dollars, so the total is {total} dollars.")
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": reply}]
    asked, answer = question(rng, bought, total)
    return messages + [{"role": "user", "content": asked}, {"role": "assistant", "content": answer}]


if __name__ == "__main__":
    rng = random.Random(0)
    chats = {json.dumps({"messages": conversation(rng)}) for _ in range(400)}
    path = Path(__file__).with_name("running_total.jsonl")
    path.write_text("".join(line + "\n" for line in sorted(chats, key=lambda s: rng.random())))
    print(f"{len(chats)} conversations -> {path}")
