"""Tag names: booru underscores and Illustration2Vec spaces name the same tag."""

from __future__ import annotations

from collections.abc import Iterable


def canonical_tag(name: str) -> str:
    """The one spelling curate stores: lower case, words joined by underscores (`Blue eyes` → `blue_eyes`)."""
    return "_".join(name.strip().lower().split())


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
