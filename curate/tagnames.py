"""Tag names: booru underscores and Illustration2Vec spaces name the same tag, and old names today's."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping


def canonical_tag(name: str) -> str:
    """The one spelling curate stores: lower case, words joined by underscores (`Blue eyes` → `blue_eyes`)."""
    return "_".join(name.strip().lower().split())


# Older names (Illustration2Vec's, from 2015 Danbooru) → the names Danbooru and the WD v3 taggers'
# selected_tags.csv use today. From Danbooru's tag aliases: twin_tails → twintails, hair_clip → hairclip,
# silver_hair and gray_hair → grey_hair, gray_eyes → grey_eyes, blond_hair → blonde_hair. Applied where a
# list of labels is read (presets, --list), not to the tags taggers and boards give. A deprecated tag with
# no one successor has no entry: Danbooru retired `bangs` for its kinds (blunt_bangs, swept_bangs, …),
# and a tagger that lacks it is warned about where the labels are chosen.
ALIASES = {
    "twin_tails": "twintails",
    "hair_clip": "hairclip",
    "silver_hair": "grey_hair",
    "gray_hair": "grey_hair",
    "gray_eyes": "grey_eyes",
    "blond_hair": "blonde_hair",
}


def current_tag(name: str) -> str:
    """The canonical spelling of a tag's current name (`Twin tails` → `twintails`)."""
    tag = canonical_tag(name)
    return ALIASES.get(tag, tag)


def tag_index(vocabulary: Iterable[str]) -> dict[str, int]:
    """Each name's position, keyed by its current canonical spelling (what `current_tag` gives)."""
    return {current_tag(name): i for i, name in enumerate(vocabulary)}


def nearest_tags(name: str, index: Mapping[str, int], count: int = 5) -> list[str]:
    """The known spellings closest to `name`, for an error that says what was probably meant."""
    return difflib.get_close_matches(current_tag(name), list(index), n=count, cutoff=0.5)


def merge_labels(tagger: Iterable[str], booru: Iterable[str]) -> tuple[list[str], list[str]]:
    """Canonical labels from both sources, tagger's order first, and where each came from."""
    from_tagger = list(dict.fromkeys(canonical_tag(t) for t in tagger))
    from_booru = set(canonical_tag(t) for t in booru)
    labels = from_tagger + [t for t in dict.fromkeys(canonical_tag(b) for b in booru) if t not in from_tagger]
    sources = [
        "both" if t in from_booru and t in from_tagger else "tagger" if t in from_tagger else "booru"
        for t in labels
    ]
    return labels, sources
