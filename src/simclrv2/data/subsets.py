"""Label subsets for fine-tuning (docs/recipe.md#label-subsets): class-balanced 1 % / 10 % of the training
set, saved as lists of image ids so a run's labelled images can be reused and compared.

A spec is one of: ``"1%"`` (a percentage of the set), ``"600"`` or ``600`` (a count), ``"60/class"`` or
``"60 per class"``, or the path of a list file (one image id per line; blank lines and lines starting with
``#`` are ignored). Fractions and counts are split evenly: every class gets floor(count / C) images and the
remainder goes, one each, to classes drawn by the seed. ``"100%"`` (a count equal to the set) is the whole
set, balanced or not.

Within a class, images are taken in the order of one seeded permutation, so for the same seed a larger subset
contains every smaller one (1 % ⊂ 10 %), which keeps label-efficiency curves comparable.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from simclrv2.atomic import publish, temporary_beside
from simclrv2.data.dataset import ImageDataset
from simclrv2.errors import SimCLRv2Error

log = logging.getLogger(__name__)

_PERCENT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*%$")
_COUNT = re.compile(r"^\d+$")
_PER_CLASS = re.compile(r"^(\d+)\s*(?:/|per)\s*class$", re.IGNORECASE)
_CLASSES_SHOWN = 5  # class names quoted in a warning
_SPEC_HELP = ('use a percentage ("1%"), a count ("600"), a per-class count ("60/class") '
              "or a list file of image ids")


@dataclass(frozen=True)
class SubsetSpec:
    """A parsed subset spec: ``kind`` is "fraction" (``value`` in (0, 1]), "count", "per_class" (``value``
    an int >= 1) or "file" (``path``)."""

    kind: str
    value: float | int = 0
    path: Path | None = None

    def __str__(self) -> str:
        if self.kind == "fraction":
            return f"{self.value * 100:g}%"
        if self.kind == "per_class":
            return f"{self.value}/class"
        return str(self.path) if self.kind == "file" else str(self.value)


def parse_subset_spec(spec: str | int) -> SubsetSpec:
    """The ``SubsetSpec`` a config value stands for; anything else is an error saying what is accepted."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int)):
        raise SimCLRv2Error(f"label subset {spec!r} is neither text nor a count; {_SPEC_HELP}")
    if isinstance(spec, int):
        if spec < 1:
            raise SimCLRv2Error(f"a label subset needs at least one image, got {spec}; {_SPEC_HELP}")
        return SubsetSpec("count", spec)
    text = spec.strip()
    if match := _PERCENT.match(text):
        percent = float(match.group(1))
        if not 0 < percent <= 100:
            raise SimCLRv2Error(f"label subset {spec!r}: a percentage must be in (0%, 100%]")
        return SubsetSpec("fraction", percent / 100)
    if _COUNT.match(text):
        return parse_subset_spec(int(text))
    if match := _PER_CLASS.match(text):
        per_class = int(match.group(1))
        if per_class < 1:
            raise SimCLRv2Error(f"label subset {spec!r}: each class needs at least one image")
        return SubsetSpec("per_class", per_class)
    path = Path(text).expanduser()
    if text and (path.suffix == ".txt" or path.is_file()):
        return SubsetSpec("file", path=path)
    raise SimCLRv2Error(f"cannot read label subset {spec!r}; {_SPEC_HELP} (no such file)")


def _per_class_counts(class_sizes: torch.Tensor, class_names: list[int], spec: SubsetSpec,
                      order: torch.Tensor) -> torch.Tensor:
    """(C,) images to take from each class; ``order``: the seeded order in which classes get the remainder."""
    num_classes, total = class_sizes.numel(), int(class_sizes.sum())
    if spec.kind == "per_class":
        base, remainder = int(spec.value), 0
    else:
        count = _total_count(spec, total)
        if count > total:
            raise SimCLRv2Error(f"label subset {spec} asks for {count} images but the set has only {total}")
        if count < num_classes:
            raise SimCLRv2Error(f"label subset {spec} gives {count} images, fewer than the {num_classes} "
                                "classes; ask for at least one image per class")
        base, remainder = divmod(count, num_classes)
    short = (class_sizes < base).nonzero().flatten().tolist()
    if short:
        c = short[0]
        more = f" ({len(short)} classes are too small)" if len(short) > 1 else ""
        raise SimCLRv2Error(f"label subset {spec} needs {base} images of class {class_names[c]}, which has "
                            f"only {int(class_sizes[c])}{more}; ask for fewer images or give a list file")
    counts = torch.full_like(class_sizes, base)
    spare = order[class_sizes[order] > base]  # classes that can give one more image, in the seeded order
    if spare.numel() < remainder:
        raise SimCLRv2Error(f"label subset {spec}: only {spare.numel()} classes have more than {base} "
                            f"images, so the remaining {remainder} cannot go to distinct classes; ask for "
                            "fewer images or give a list file")
    counts[spare[:remainder]] += 1
    return counts


def _total_count(spec: SubsetSpec, n: int) -> int:
    """Images a fraction or count spec asks for out of ``n``."""
    if spec.kind == "fraction":
        # round() first: 0.01 * 60000 is 599.9999999999999 in floating point, and must give 600.
        return math.floor(round(n * float(spec.value), 6))
    return int(spec.value)


def select_subset(labels: torch.Tensor, spec: SubsetSpec, seed: int) -> torch.Tensor:
    """Sorted int64 indices of a class-balanced subset of ``labels`` (the classes are those present).

    Deterministic given ``seed``; different seeds give different subsets (unless the subset is everything)."""
    if spec.kind == "file":
        raise SimCLRv2Error("a list-file subset names image ids; use subset_indices(dataset, ...) for it")
    if labels.dim() != 1 or labels.numel() == 0 or labels.dtype.is_floating_point:
        raise SimCLRv2Error(f"a label subset needs a non-empty 1-D tensor of class labels, got "
                            f"{labels.dtype} {tuple(labels.shape)}")
    n = labels.numel()
    if spec.kind != "per_class" and _total_count(spec, n) == n:
        return torch.arange(n)  # the whole set: nothing to choose or balance
    classes, inverse = torch.unique(labels.cpu().long(), return_inverse=True)  # inverse: (N,) in 0..C-1
    class_sizes = torch.bincount(inverse, minlength=classes.numel())  # (C,)
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)  # one image order for every subset size: nested subsets
    class_order = torch.randperm(classes.numel(), generator=generator)
    counts = _per_class_counts(class_sizes, classes.tolist(), spec, class_order)
    # A stable sort by class keeps the permutation's order inside each class.
    grouped = perm[torch.sort(inverse[perm], stable=True).indices]  # (N,) class by class, shuffled within
    starts = torch.cumsum(class_sizes, 0) - class_sizes
    chosen = [grouped[start : start + k] for start, k in zip(starts.tolist(), counts.tolist(), strict=True)]
    return torch.cat(chosen).sort().values


def subset_indices(dataset: ImageDataset, spec: str | int, seed: int) -> torch.Tensor:
    """Sorted int64 indices into ``dataset`` for a subset spec (see the module docstring): a list file is
    matched against ``dataset.ids``; any other spec draws a class-balanced subset of the labels.

    A subset without an image of some class of the dataset is allowed (a list file may mean it), but logged
    as a warning naming those classes: the classifier will never predict them."""
    parsed = parse_subset_spec(spec)
    if parsed.kind != "file":
        indices = select_subset(dataset.require_labels(f"label subset {parsed}"), parsed, seed)
    else:
        indices = _file_indices(dataset, parsed.path)
    warn_missing_classes(dataset, indices, str(parsed))
    return indices


def warn_missing_classes(dataset: ImageDataset, indices: torch.Tensor, what: str) -> list[str]:
    """Logs one warning naming the classes of ``dataset`` with no image in ``dataset[indices]``; returns them."""
    if dataset.labels is None:
        return []
    present = set(dataset.labels[indices].tolist())
    missing = [name for k, name in enumerate(dataset.classes) if k not in present]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:_CLASSES_SHOWN])
        more = f" and {len(missing) - _CLASSES_SHOWN} more" if len(missing) > _CLASSES_SHOWN else ""
        log.warning("label subset %s of %s has no image of %d of its %d classes (%s%s): the classifier will "
                    "never predict them; ask for more labels or add them to the list", what, dataset.name,
                    len(missing), dataset.num_classes, shown, more)
    return missing


def _file_indices(dataset: ImageDataset, path: Path) -> torch.Tensor:
    wanted, every = read_subset_file(path), dataset.ids
    position = {image_id: i for i, image_id in enumerate(every)}
    if len(position) != len(every):
        raise SimCLRv2Error(f"{dataset.name} has repeated image ids, so a list file cannot name its images")
    unknown = [image_id for image_id in wanted if image_id not in position]
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:3])
        raise SimCLRv2Error(f"{path}: {len(unknown)} of {len(wanted)} image ids are not in "
                            f"{dataset.name} (e.g. {shown}); was the list written for another dataset or "
                            "split?")
    return torch.tensor(sorted(position[image_id] for image_id in wanted), dtype=torch.int64)


def read_subset_file(path: Path) -> list[str]:
    """The image ids listed in a subset file, in file order; an empty list or a repeated id is an error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SimCLRv2Error(f"cannot read label subset file {path}: {error}") from error
    ids, seen = [], {}
    for number, line in enumerate(lines, start=1):
        image_id = line.strip()
        if not image_id or image_id.startswith("#"):
            continue
        if image_id in seen:
            raise SimCLRv2Error(f"{path}: image id {image_id!r} appears twice (lines {seen[image_id]} and "
                                f"{number}); list each image once")
        seen[image_id] = number
        ids.append(image_id)
    if not ids:
        raise SimCLRv2Error(f"label subset file {path} lists no image ids; write one id per line")
    return ids


def write_subset_file(path: Path, dataset: ImageDataset, indices: torch.Tensor, *, seed: int | None = None,
                      spec: str | int | None = None) -> None:
    """Writes the ids of ``dataset[indices]`` one per line under a ``#`` header, atomically.

    An existing file listing the same ids (in the same order) is left as it is; one listing other ids is
    never overwritten: a run directory's subset must not change under it."""
    path = Path(path)
    index = torch.as_tensor(indices).long().flatten().tolist()
    if not index:
        raise SimCLRv2Error("refusing to write an empty label subset")
    every = dataset.ids  # once: a streamed dataset builds its ids on each access
    if min(index) < 0 or max(index) >= len(every):
        raise SimCLRv2Error(f"subset indices must lie in [0, {len(every)}) for {dataset.name}")
    ids = [every[i] for i in index]
    if len(set(ids)) != len(ids):
        raise SimCLRv2Error("the subset lists an image twice; pass each index once")
    bad = next((i for i in ids if not i or i != i.strip() or i.startswith("#") or len(i.splitlines()) > 1),
               None)
    if bad is not None:
        raise SimCLRv2Error(f"image id {bad!r} cannot be written on a line of its own (empty, padded, '#' or "
                            "a line break); rename the image")
    header = [f"# label subset of {dataset.name}: {len(ids)} images"]
    header += [f"# spec: {spec}"] if spec is not None else []
    header += [f"# seed: {seed}"] if seed is not None else []
    text = "\n".join(header + ids) + "\n"
    if path.exists():
        _check_same_ids(path, ids)
        return
    with temporary_beside(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            publish(tmp, path, replace=False)  # never overwrite another writer's list
        except FileExistsError:
            _check_same_ids(path, ids)


def _check_same_ids(path: Path, ids: list[str]) -> None:
    if read_subset_file(path) != ids:
        raise SimCLRv2Error(f"{path} already lists a different label subset; remove it or write elsewhere")
