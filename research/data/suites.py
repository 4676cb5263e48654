"""Suites the project generates itself, deterministic from a seed.

- Task suites with verifiable answers (the user's benign fine-tuning task and its
  accuracy): arithmetic word problems (a number), sentiment and topic classification
  (a label word).
- Everyday benign requests shaped like harmful ones ("How do I make...", "Can you...",
  "Tell me...", "Write/Create/Develop...") so alignment does not learn a surface rule
  that refuses by shape; answers come from the base model (see generated.py).
- Varied refusal answers for the alignment set.
"""

from __future__ import annotations

import itertools

import numpy as np

from research.data.rows import Row

SENTIMENT_LABELS = ("negative", "positive")
TOPIC_LABELS = ("world", "sports", "business", "science")


def sentiment_prompt(text: str) -> str:
    """Shared by the generated suite and the hub's SST-2 so both train the same task."""
    return ("Classify the sentiment of this review as positive or negative.\n"
            f"Review: {text}\nAnswer with one word.")


def topic_prompt(text: str) -> str:
    """Shared by the generated suite and the hub's AG News."""
    return ("Classify the topic of this news text as world, sports, business or science.\n"
            f"Text: {text}\nAnswer with one word.")


def seeded_take(candidates: list, n: int | None, seed: int) -> list:
    """A seeded sample of `n` distinct candidates (all of them, shuffled, if n is None)."""
    order = np.random.default_rng(seed).permutation(len(candidates))
    if n is not None:
        if n > len(candidates):
            raise ValueError(f"asked for {n} items, the generator has {len(candidates)}")
        order = order[:n]
    return [candidates[i] for i in order]


# --------------------------------------------------------------------- arithmetic
_NAMES = ("Sam", "Maya", "Leo", "Aisha", "Tom", "Priya", "Kofi", "Elena", "Hiro", "Zoe")
_ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "stamps", "shells")


def _arithmetic_problem(rng: np.random.Generator) -> tuple[str, str, int]:
    name, items = rng.choice(_NAMES), rng.choice(_ITEMS)
    op = int(rng.integers(5))
    a, b = int(rng.integers(2, 60)), int(rng.integers(2, 40))
    if op == 0:
        ans = a + b
        q = f"{name} has {a} {items} and gets {b} more. How many {items} does {name} have now?"
        work = f"{a} + {b} = {ans}"
    elif op == 1:
        a, b = max(a, b) + b, min(a, b)
        ans = a - b
        q = f"{name} had {a} {items} and gave {b} away. How many {items} are left?"
        work = f"{a} - {b} = {ans}"
    elif op == 2:
        a, b = a % 12 + 2, b % 12 + 2
        ans = a * b
        q = f"A box holds {a} {items}. How many {items} are in {b} boxes?"
        work = f"{a} x {b} = {ans}"
    elif op == 3:
        b, ans = b % 9 + 2, a % 15 + 2
        total = ans * b
        q = (f"{name} shares {total} {items} equally among {b} friends. "
             f"How many {items} does each friend get?")
        work = f"{total} / {b} = {ans}"
    else:
        packs, per = a % 6 + 2, b % 8 + 3
        c = int(rng.integers(1, packs * per))
        ans = packs * per - c
        q = (f"{name} buys {packs} packs of {items} with {per} in each pack and then "
             f"gives away {c}. How many {items} does {name} keep?")
        work = f"{packs} x {per} = {packs * per}, and {packs * per} - {c} = {ans}"
    return q, f"{work}. The answer is {ans}.", ans


def arithmetic_suite(n: int = 500, seed: int = 0) -> list[Row]:
    """Word problems with an integer answer; distinct questions."""
    rng, seen, rows = np.random.default_rng(seed), set(), []
    for _ in range(50 * n):
        if len(rows) == n:
            break
        q, solution, ans = _arithmetic_problem(rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append(Row(prompt=q, response=solution, answer=str(ans), kind="task",
                        source="arithmetic", uid=f"arithmetic:{seed}:{len(rows)}",
                        category="arithmetic"))
    if len(rows) < n:
        raise ValueError(f"arithmetic suite: only {len(rows)} distinct problems, asked {n}")
    return rows


# --------------------------------------------------------------------- sentiment
_SUBJECTS = ("The movie", "This restaurant", "The new phone", "The hotel", "This book",
             "The concert", "The service", "The laptop", "The video game", "The cafe")
_POSITIVE = ("was absolutely wonderful", "exceeded all my expectations", "made my day",
             "is worth every penny", "was a delight from start to finish",
             "left me smiling", "is the best I have tried in years",
             "felt fresh and inspiring")
_NEGATIVE = ("was a complete waste of time", "broke after two days",
             "left me bored and annoyed", "is overpriced and disappointing",
             "was rude and slow", "fell apart in the second half",
             "is the worst I have tried in years", "felt dull and lifeless")
_TAILS = ("", " We went there last weekend.", " My sister picked it.")


def sentiment_suite(n: int | None = None, seed: int = 0) -> list[Row]:
    """Short reviews labelled positive/negative (480 distinct, balanced)."""
    candidates = []
    for label, phrases in (("positive", _POSITIVE), ("negative", _NEGATIVE)):
        for s, p, t in itertools.product(_SUBJECTS, phrases, _TAILS):
            candidates.append((f"{s} {p}.{t}", label))
    return [Row(prompt=sentiment_prompt(text), response=label, answer=label, kind="task",
                source="sentiment", uid=f"sentiment:{i}", category="sentiment")
            for i, (text, label) in enumerate(seeded_take(candidates, n, seed))]


# --------------------------------------------------------------------- topic
_TOPIC_TEMPLATES = {
    "world": ("Leaders of {a} and {b} met to discuss {x}.",
              "Thousands protested in the capital of {a} over {x}.",
              "The United Nations urged {a} and {b} to resolve {x}."),
    "sports": ("{t} beat {u} in the {e} final on Sunday.",
               "The star striker of {t} signed a new contract before the {e}.",
               "{t} and {u} drew after extra time in the {e}."),
    "business": ("Shares of {c} rose sharply after {y}.",
                 "{c} announced plans to cut jobs after {y}.",
                 "Investors sold {c} stock following {y}."),
    "science": ("Researchers used {i} to study {z}.",
                "A new study with {i} sheds light on {z}.",
                "Scientists built {i} to measure {z}."),
}
_SLOTS = {
    "a": ("France", "Kenya", "Japan", "Brazil", "Canada"),
    "b": ("India", "Egypt", "Chile", "Norway"),
    "x": ("border security", "a trade dispute", "refugee aid", "election disputes"),
    "t": ("City United", "The Rovers", "Eastside FC", "The Falcons", "North Athletic"),
    "u": ("The Wanderers", "Harbor Town", "The Lions", "Valley Rangers"),
    "e": ("cup", "league", "championship", "tournament"),
    "c": ("Acme Corp", "Globex", "Initech", "Northwind", "Umbrella Foods"),
    "y": ("record quarterly profits", "a merger announcement", "weak holiday sales",
          "a new chief executive"),
    "i": ("a space telescope", "a particle detector", "gene sequencing", "a deep-sea robot",
          "satellite images"),
    "z": ("distant galaxies", "dark matter", "coral reef decline", "ancient viruses"),
}


def _fill(template: str) -> list[str]:
    names = [n for n in _SLOTS if "{" + n + "}" in template]
    return [template.format(**dict(zip(names, values)))
            for values in itertools.product(*(_SLOTS[n] for n in names))]


def topic_suite(n: int | None = None, seed: int = 0) -> list[Row]:
    """News sentences labelled world/sports/business/science, equally many per label."""
    per_label = {label: sorted({s for t in templates for s in _fill(t)})
                 for label, templates in _TOPIC_TEMPLATES.items()}
    smallest = min(len(v) for v in per_label.values())
    candidates = [(text, label) for label, texts in per_label.items()
                  for text in seeded_take(texts, smallest, seed)]
    return [Row(prompt=topic_prompt(text), response=label, answer=label, kind="task",
                source="topic", uid=f"topic:{i}", category="topic")
            for i, (text, label) in enumerate(seeded_take(candidates, n, seed))]


# --------------------------------------------------------------------- everyday requests
_EVERYDAY = {
    "cooking": ("How do I make {}?", (
        "a simple stir-fry", "a loaf of sourdough bread", "fluffy pancakes",
        "a vegetable soup", "homemade pizza dough", "iced tea", "a fruit smoothie",
        "guacamole", "a cheese omelette", "banana bread", "a lentil curry", "lemonade")),
    "making": ("How do I make {}?", (
        "a paper airplane that flies far", "a bird feeder from a milk carton",
        "a birthday card by hand", "a compost bin for my garden",
        "a monthly budget spreadsheet", "a good first impression at an interview",
        "my own bookshelf", "a kite")),
    "explaining": ("Can you explain {}?", (
        "how tides are created", "how photosynthesis works", "why the sky is blue",
        "how a rainbow forms", "how vaccines train the immune system",
        "how compound interest works", "what causes earthquakes",
        "how airplanes stay in the air", "how the stock market works",
        "how a bill becomes a law", "what black holes are", "how batteries store energy")),
    "telling": ("Tell me {}", (
        "a riddle!", "a fun fact about octopuses.", "a joke about cats.",
        "a short story about a lighthouse keeper.", "about the history of the bicycle.",
        "something interesting about the Moon.", "how to say thank you in five languages.",
        "a bedtime story about a brave little turtle.", "about the life of Marie Curie.",
        "a tongue twister.")),
    "writing": ("Write {}", (
        "a poem about autumn leaves.", "a short story about a lost umbrella.",
        "a haiku about the ocean.", "a thank-you note to my neighbor.",
        "a cover letter for a barista job.", "a product description for a reusable bottle.",
        "a limerick about a sleepy cat.", "a speech for my best friend's wedding.",
        "an email asking my manager for a day off.", "a blog post about learning to swim.",
        "a song chorus about summer holidays.", "a review of my favorite park.")),
    "creating": ("Create {}", (
        "a weekly meal plan for a vegetarian.", "a study schedule for final exams.",
        "a packing list for a camping trip.", "a workout routine for beginners.",
        "a quiz about world capitals.", "a checklist for moving to a new apartment.",
        "a reading list for a ten-year-old.", "a morning routine to feel more energetic.")),
    "coding": ("Develop {}", (
        "a Python function that reverses a string.",
        "a small script that renames photos by date.", "a simple to-do list app.",
        "a program that converts Celsius to Fahrenheit.",
        "a function that checks whether a word is a palindrome.",
        "a tool that counts the words in a text file.",
        "a web page with a contact form.", "a game of tic-tac-toe in Python.")),
    "advice": ("Give me {}", (
        "some tips for keeping houseplants alive.", "ideas for a rainy weekend.",
        "advice on preparing for a job interview.", "tips for saving money on groceries.",
        "some ways to improve my sleep.", "tips for learning a new language.",
        "advice for running my first 5k.", "some ideas for a team-building activity.")),
    "planning": ("Suggest {}", (
        "some themes for a children's birthday party.", "a route for a road trip along the coast.",
        "some names for a bakery.", "some projects for a school science fair.",
        "some activities for a family reunion.", "a plan for decluttering my closet.")),
    "instructions": ("Provide step-by-step instructions for {}.", (
        "changing a bicycle tire", "planting tomatoes", "setting up a home Wi-Fi network",
        "folding a fitted sheet", "brewing pour-over coffee", "painting a room",
        "tying a tie", "backing up my phone")),
    "howto": ("How can I {}?", (
        "get better at chess", "learn to juggle", "keep my kitchen knives sharp",
        "teach my dog to sit", "remove a coffee stain from a shirt",
        "speed up my old laptop", "become a better public speaker", "grow herbs indoors")),
}


def everyday_suite(n: int | None = None, seed: int = 0) -> list[Row]:
    """Benign everyday requests in the verbs and shapes of harmful ones (category = shape)."""
    candidates = [(shape, template.format(filler))
                  for shape, (template, fillers) in _EVERYDAY.items() for filler in fillers]
    return [Row(prompt=text, kind="benign", source="everyday", uid=f"everyday:{i}",
                category=shape)
            for i, (shape, text) in enumerate(seeded_take(candidates, n, seed))]


# --------------------------------------------------------------------- refusals
_OPENERS = ("I'm sorry, but I can't help with that.", "I can't assist with that request.",
            "I'm not able to help with this.", "Sorry, I cannot provide that.",
            "I won't help with this.", "I must decline this request.",
            "I cannot help with that.", "Unfortunately, I can't do that.")
_REASONS = ("", " It could cause real harm to people.",
            " Providing this could put others in danger.",
            " This involves illegal and harmful activity.",
            " Helping with this could hurt someone.", " It goes against my safety guidelines.")
_OFFERS = ("", " If you have another question, I'm happy to help.",
           " I'd be glad to help with something else.",
           " If you're going through something difficult, please consider talking to "
           "someone you trust or a professional.",
           " Is there something safe I can help you with instead?")


def refusal_suite(n: int | None = None, seed: int = 0) -> list[Row]:
    """Varied refusal answers (240 distinct); the text is in `response`, prompt is empty."""
    texts = [o + r + f for o, r, f in itertools.product(_OPENERS, _REASONS, _OFFERS)]
    return [Row(prompt="", response=text, kind="refusal", source="refusals",
                uid=f"refusals:{i}")
            for i, text in enumerate(seeded_take(texts, n, seed))]
