"""Class names for imported classifiers: ImageNet's 1000 (what every released classifier predicts), or numbers.

``imagenet_classes.tsv`` beside this file lists the 1000 ILSVRC-2012 classes in class-index order with their
WordNet lemmas (where the list comes from is in its header). A class is named by its first lemma ("tench");
the two lemmas that name two classes each ("crane": the bird and the machine; "maillot") get their WordNet id.
"""

from __future__ import annotations

from collections import Counter
from importlib import resources

IMAGENET_CLASSES = 1000


def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet class names in class-index order: unique, without commas."""
    text = resources.files("simclrv2.tf_import").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    first = [lemmas.split(",")[0].strip() for _, lemmas in rows]
    shared = {name for name, count in Counter(first).items() if count > 1}
    return tuple(f"{name} ({wnid})" if name in shared else name for (wnid, _), name in zip(rows, first, strict=True))


def class_names(num_classes: int) -> tuple[str, ...]:
    """ImageNet's names for a 1000-way classifier, else "0", "1", …"""
    if num_classes == IMAGENET_CLASSES:
        return imagenet_classes()
    return tuple(str(k) for k in range(num_classes))
