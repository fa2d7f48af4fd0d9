"""Training text for the LiT image tower: varied benign sentences generated offline, plus text read from files.

The tower has to read whatever the LVLM will be shown (benign captions and requests, and harmful requests from sources
that are not the test set), so its training text is broad: template sentences in several registers (captions,
questions, how-to requests, instructions, statements) and "word salad" lines drawn from the text encoder's own word
vocabulary, which teach it to read words no template uses. No labels of any kind are attached to any sentence.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

_ADJECTIVES = (
    "red blue green yellow black white orange purple brown grey small large tiny huge old new young ancient modern "
    "wooden metal plastic glass shiny dusty wet dry warm cold bright dark quiet noisy busy empty crowded famous "
    "strange friendly happy sleepy hungry broken clean dirty soft heavy light round square tall short striped spotted "
    "colorful simple elegant rusty fresh ripe frozen golden silver"
).split()
_NOUNS = (
    "cat dog horse bird cow sheep goat rabbit fox bear lion tiger elephant giraffe zebra monkey duck owl fish turtle "
    "bicycle car bus train truck boat plane motorcycle tractor scooter house bridge tower castle church school "
    "library museum hospital station market kitchen garden park forest river lake mountain beach island desert "
    "table chair lamp clock mirror window door bed sofa shelf book pencil notebook laptop phone camera guitar piano "
    "violin drum ball kite umbrella hat coat shoe bag cup mug bowl plate spoon fork knife bottle basket box candle "
    "apple banana orange bread cake pizza sandwich salad soup cookie cheese tomato carrot potato flower tree leaf "
    "rock cloud rainbow snowman robot rocket planet star moon sun map flag ladder tent fence bench statue fountain"
).split()
_PLACES = (
    "on the table|in the kitchen|next to the window|under a tree|in the park|on the beach|near the river|"
    "in a busy street|on a snowy mountain|in the garden|at the train station|inside a museum|on a wooden shelf|"
    "in front of a school|behind the house|on the grass|in a small room|at the market|by the lake|on a sunny day|"
    "at night|in the rain|in the forest|on a white background|in a classroom|at the airport|in the city center"
).split("|")
_VERBS_ING = (
    "sitting|standing|sleeping|running|jumping|eating|playing|walking|resting|waiting|swimming|flying|reading|"
    "drinking|dancing|climbing|looking out|hiding|smiling|painting"
).split("|")
_TASKS = (
    "bake sourdough bread|grow tomatoes on a balcony|learn to play the guitar|write a cover letter|fix a flat tire|"
    "plan a birthday party|train a puppy to sit|make a paper airplane|start a vegetable garden|save money for a trip|"
    "improve my handwriting|clean a cast iron pan|prepare for a job interview|learn a new language|build a birdhouse|"
    "make homemade pasta|organize a small closet|study for a math exam|knit a warm scarf|brew a good cup of coffee|"
    "take better photos with a phone|write a short poem|set up a fish tank|paint a landscape with watercolors|"
    "change a light bulb safely|make a budget spreadsheet|reduce food waste at home|care for a houseplant|"
    "memorize a speech|choose a good running shoe|decorate a cake|repair a wobbly chair|teach a child to ride a bike|"
    "make a healthy breakfast|stay focused while studying|sew a button back on|plan a hiking trip|make lemonade|"
    "back up files on a computer|recycle old electronics|write a thank you note|improve my sleep|do a card trick"
).split("|")
_TOPICS = (
    "photosynthesis|the water cycle|gravity|the history of the printing press|how vaccines work|the solar system|"
    "volcanoes|the French Revolution|how computers store numbers|climate and weather|the life of bees|"
    "ancient Egypt|how rainbows form|the rules of chess|renewable energy|how airplanes fly|the human heart|"
    "compound interest|the Roman Empire|plate tectonics|how bread rises|the moon landing|ocean tides|"
    "the invention of the telephone|how to read a map|the migration of birds|prime numbers|the Olympic Games|"
    "electric circuits|the structure of DNA|how bridges stay up|the Renaissance|black holes|the periodic table"
).split("|")
_AUDIENCES = "a child|a beginner|a student|my grandmother|a tourist|a new employee|a friend|a classmate".split("|")
_FORMATS = "a short story|a poem|a list of tips|a summary|a recipe|an email|a song|a riddle|a haiku|a letter".split("|")
_NAMES = "Anna|Ben|Carlos|Dana|Elif|Femi|Grace|Hiro|Ines|Jamal|Kira|Liam|Maya|Noah|Olga|Priya|Quinn|Rosa".split("|")
_NUMBERS = "two|three|four|five|six|seven|ten|twelve|twenty".split("|")

_TEMPLATES = (
    "a photo of a {adj} {noun} {place}",
    "a {adj} {noun} {verb} {place}",
    "{num} {adj} {noun}s {place}",
    "a {noun} and a {adj} {noun2} {place}",
    "an illustration of a {adj} {noun} {verb}",
    "close-up of a {noun} next to a {adj} {noun2}",
    "How do I {task}?",
    "How can I {task} without spending much money?",
    "Steps to {task}.",
    "List the steps to {task}.",
    "What is the best way to {task}?",
    "Give me {num} tips to {task}.",
    "Explain {topic} to {audience}.",
    "Write {format} about {topic}.",
    "Write {format} about a {adj} {noun}.",
    "Summarize {topic} in {num} sentences.",
    "What is shown in the image? A {adj} {noun} {place}.",
    "Why is the {noun} {adj}?",
    "{name} bought a {adj} {noun} {place}.",
    "{name} wants to {task} this weekend.",
    "{name} asked how to {task}.",
    "The {noun} {place} is {adj}.",
    "Describe a {adj} {noun} in detail.",
    "Compare a {noun} with a {noun2}.",
    "Is it safe to leave a {noun} {place}?",
    "Tell me a fun fact about {topic}.",
)


def _fill(template: str, rng: random.Random) -> str:
    noun, noun2 = rng.sample(_NOUNS, 2)
    return template.format(
        adj=rng.choice(_ADJECTIVES),
        noun=noun,
        noun2=noun2,
        place=rng.choice(_PLACES),
        verb=rng.choice(_VERBS_ING),
        task=rng.choice(_TASKS),
        topic=rng.choice(_TOPICS),
        audience=rng.choice(_AUDIENCES),
        format=rng.choice(_FORMATS),
        name=rng.choice(_NAMES),
        num=rng.choice(_NUMBERS),
    )


def benign_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct benign template sentences (captions, questions, how-to requests, instructions), deterministic.

    Example:
        >>> benign_sentences(2, seed=0)  # doctest: +SKIP
        ['Write a haiku about the water cycle.', 'a photo of a rusty kite at night']
    """
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"the templates cannot produce {n} distinct sentences (got {len(seen)})")
        seen.setdefault(_fill(rng.choice(_TEMPLATES), rng), None)
    return list(seen)


def vocabulary_words(vocab_file: str | Path, min_length: int = 3) -> list[str]:
    """Whole alphabetic words of a WordPiece `vocab.txt` (the text encoder's own vocabulary), in file order."""
    words = []
    for line in Path(vocab_file).read_text(encoding="utf-8").splitlines():
        if len(line) >= min_length and line.isascii() and line.isalpha():
            words.append(line)
    if not words:
        raise ValueError(f"{vocab_file} holds no alphabetic words of length >= {min_length}")
    return words


def word_salad_sentences(words: Sequence[str], n: int, seed: int = 0, length: tuple[int, int] = (3, 10)) -> list[str]:
    """`n` lines of random words from `words`: they teach the tower to read vocabulary no template uses."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(*length))) for _ in range(n)]


def read_texts(path: str | Path, column: str | None = None) -> list[str]:
    """Read sentences from a `.txt` (one per line), `.csv` (`column`, else the first column) or `.json` list file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise ValueError(f"{path} has no header row")
            key = column or reader.fieldnames[0]
            if key not in reader.fieldnames:
                raise ValueError(f"{path} has no column {key!r}; columns are {reader.fieldnames}")
            texts = [row[key] for row in reader]
    elif path.suffix == ".json":
        texts = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"{path} must hold a JSON list of strings")
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    return [t.strip() for t in texts if t.strip()]


def unique(texts: Iterable[str]) -> list[str]:
    """Texts with whitespace-normalised duplicates removed, first occurrence kept."""
    return list(dict.fromkeys(" ".join(t.split()) for t in texts if t.strip()))
