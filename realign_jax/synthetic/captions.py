"""Captions from templates: every object is mentioned, sometimes with attributes and one
spatial relation, with varied words and sentence frames.

Captions are faithful to the image, so the training captions carry the world's
co-occurrence prior exactly as often as the images do (cup with saucer ~90% of the time):
a captioner that leans on language instead of pixels learns to add the saucer.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from realign_jax.data.text import capitalize, join_list, with_article
from realign_jax.synthetic.language import (
    BACKGROUND_WORDS,
    POSITION_PHRASES,
    RELATION_PHRASES,
    count_phrase,
    pick,
    word_for,
)
from realign_jax.synthetic.truth import ImageTruth

CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image.",
    "Describe this image briefly.",
    "What is in this picture?",
    "Write a short caption for the image.",
    "What do you see in the image?",
    "List the objects in the image.",
)


def _object_phrases(truth: ImageTruth, words: dict[str, str], rng: np.random.Generator,
                    attribute_probability: float) -> list[tuple[str, bool]]:
    """One noun phrase per category, with whether it is plural."""
    phrases = []
    for name, n in Counter(truth.names).items():
        objects = [o for o in truth.objects if o.name == name]
        word = words[name]
        if n == 1:
            obj = objects[0]
            adjectives = []
            if rng.random() < attribute_probability / 2:
                adjectives.append(obj.size)
            if rng.random() < attribute_probability:
                adjectives.append(obj.color)
            phrase = with_article(" ".join([*adjectives, word]))
            if rng.random() < attribute_probability / 2:
                phrase = f"{phrase} {POSITION_PHRASES[obj.position]}"
            phrases.append((phrase, False))
        else:
            colors = {o.color for o in objects}
            if len(colors) == 1 and rng.random() < attribute_probability:
                phrase = count_phrase(n, word).replace(" ", f" {colors.pop()} ", 1)
            else:
                phrase = count_phrase(n, word)
            phrases.append((phrase, True))
    return phrases


def _relation_sentence(truth: ImageTruth, words: dict[str, str], rng: np.random.Generator) -> str | None:
    """One true relation between two objects whose category appears once (so 'the cup' is unambiguous)."""
    counts = truth.counts
    usable = [(i, r, j) for i, r, j in truth.relations
              if counts[truth.objects[i].name] == 1 and counts[truth.objects[j].name] == 1]
    if not usable:
        return None
    i, relation, j = usable[int(rng.integers(len(usable)))]
    a, b = words[truth.objects[i].name], words[truth.objects[j].name]
    return f"The {a} is {RELATION_PHRASES[relation]} the {b}."


def caption(truth: ImageTruth, rng: np.random.Generator, attribute_probability: float = 0.5,
            relation_probability: float = 0.4) -> str:
    """A caption naming every object in the image."""
    words = {name: word_for(name, rng) for name in truth.counts}
    phrases = _object_phrases(truth, words, rng, attribute_probability)
    listed = join_list([p for p, _ in phrases])
    verb = "are" if phrases[0][1] else "is"
    frames = (
        f"There {verb} {listed}.",
        f"The image shows {listed}.",
        f"A picture of {listed}.",
        f"In this image, we can see {listed}.",
        f"This image contains {listed}.",
        f"{capitalize(listed)} on a {BACKGROUND_WORDS.get(truth.background, 'plain')} background.",
    )
    text = pick(rng, frames)
    if rng.random() < relation_probability:
        sentence = _relation_sentence(truth, words, rng)
        if sentence:
            text = f"{text} {sentence}"
    return text

