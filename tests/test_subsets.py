"""Label subsets: spec parsing, class-balanced selection, and list files of image ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from simclrv2.data.dataset import ImageDataset, index_ids
from simclrv2.data.subsets import (
    SubsetSpec,
    parse_subset_spec,
    read_subset_file,
    select_subset,
    subset_indices,
    write_subset_file,
)
from simclrv2.errors import SimCLRv2Error


def balanced_labels(n: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """n labels, n / num_classes of each class, in a shuffled order."""
    labels = torch.arange(n) % num_classes
    return labels[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def dataset(labels: torch.Tensor | None, name: str = "toy/train") -> ImageDataset:
    n = labels.numel() if labels is not None else 8
    classes = tuple(f"c{i}" for i in range(int(labels.max()) + 1)) if labels is not None else ()
    return ImageDataset(images=torch.zeros(n, 1, 1, 1, dtype=torch.uint8), labels=labels, classes=classes,
                        ids=index_ids(n), name=name)


# ---------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1%", SubsetSpec("fraction", 0.01)),
        ("10%", SubsetSpec("fraction", 0.1)),
        (" 12.5 % ", SubsetSpec("fraction", 0.125)),
        ("100%", SubsetSpec("fraction", 1.0)),
        ("600", SubsetSpec("count", 600)),
        (600, SubsetSpec("count", 600)),
        ("60/class", SubsetSpec("per_class", 60)),
        ("60 / class", SubsetSpec("per_class", 60)),
        ("60 per class", SubsetSpec("per_class", 60)),
    ],
)
def test_parse_accepts_percentages_counts_and_per_class_counts(spec, expected):
    assert parse_subset_spec(spec) == expected


def test_parse_reads_a_txt_name_or_an_existing_file_as_a_list_file(tmp_path):
    not_yet_written = Path("subsets/one_percent.txt")
    assert parse_subset_spec(str(not_yet_written)) == SubsetSpec("file", path=not_yet_written)
    listed = tmp_path / "labelled.lst"
    listed.write_text("00001\n")
    parsed = parse_subset_spec(str(listed))
    assert parsed.kind == "file" and parsed.path == listed


@pytest.mark.parametrize("spec", ["0%", "0", 0, "150%", "-5", "0/class", "abc", "", "1.5", "ten%", True, 2.5])
def test_parse_rejects_garbage_and_empty_subsets(spec):
    with pytest.raises(SimCLRv2Error):
        parse_subset_spec(spec)


# -------------------------------------------------------------------------------------- selection


def test_one_percent_of_a_balanced_60k_set_is_60_per_class():
    labels = balanced_labels(60_000, 10)
    chosen = select_subset(labels, parse_subset_spec("1%"), seed=0)
    assert chosen.numel() == 600
    assert torch.bincount(labels[chosen], minlength=10).tolist() == [60] * 10


def test_counts_split_into_floor_or_ceil_per_class():
    labels = balanced_labels(1000, 7)
    for spec in ("100", "7", "13", "10%"):
        parsed = parse_subset_spec(spec)
        count = 100 if spec == "10%" else int(spec)
        chosen = select_subset(labels, parsed, seed=3)
        per_class = torch.bincount(labels[chosen], minlength=7)
        assert chosen.numel() == count
        assert set(per_class.tolist()) <= {count // 7, -(-count // 7)}


def test_selection_is_sorted_unique_and_in_range():
    labels = balanced_labels(500, 5)
    chosen = select_subset(labels, parse_subset_spec("10%"), seed=1)
    assert chosen.dtype == torch.int64
    assert torch.equal(chosen, chosen.unique())  # unique() sorts: sorted with no repeats
    assert 0 <= chosen.min() and chosen.max() < 500


def test_per_class_spec_takes_exactly_that_many_of_each_class():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([30, 12, 50])])
    chosen = select_subset(labels, parse_subset_spec("12/class"), seed=0)
    assert torch.bincount(labels[chosen]).tolist() == [12, 12, 12]


def test_same_seed_same_subset_and_different_seeds_differ():
    labels = balanced_labels(2000, 10)
    spec = parse_subset_spec("5%")
    a, b, c = (select_subset(labels, spec, seed) for seed in (0, 0, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_remainder_classes_depend_on_the_seed():
    labels = balanced_labels(1000, 10)
    spec = parse_subset_spec("15")  # 1 per class, 5 classes get a second image
    extra = {tuple((torch.bincount(labels[select_subset(labels, spec, s)]) == 2).nonzero().flatten().tolist())
             for s in range(5)}
    assert all(len(classes) == 5 for classes in extra) and len(extra) > 1


def test_a_larger_subset_contains_a_smaller_one_for_the_same_seed():
    labels = balanced_labels(3000, 10)
    small = set(select_subset(labels, parse_subset_spec("1%"), seed=4).tolist())
    large = set(select_subset(labels, parse_subset_spec("10%"), seed=4).tolist())
    assert small < large


def test_remainder_skips_classes_that_are_already_exhausted():
    labels = torch.tensor([0] * 2 + [1] * 10 + [2] * 10)
    chosen = select_subset(labels, parse_subset_spec("8"), seed=0)  # 2 each, 2 extra to classes 1 and 2
    assert torch.bincount(labels[chosen]).tolist() == [2, 3, 3]


def test_the_whole_set_is_everything_even_when_unbalanced():
    labels = torch.tensor([0] * 5 + [1] * 2 + [2] * 9)
    assert torch.equal(select_subset(labels, parse_subset_spec("100%"), seed=0), torch.arange(16))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1001", "asks for 1001 images but the set has only 1000"),
        ("7", "fewer than the 10 classes"),
        ("0.5%", "fewer than the 10 classes"),
        ("101/class", "needs 101 images of class"),
    ],
)
def test_impossible_subsets_are_errors(spec, message):
    with pytest.raises(SimCLRv2Error, match=message):
        select_subset(balanced_labels(1000, 10), parse_subset_spec(spec), seed=0)


def test_a_class_with_too_few_images_is_an_error_naming_it():
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 50)
    with pytest.raises(SimCLRv2Error, match="needs 10 images of class 1, which has only 3"):
        select_subset(labels, parse_subset_spec("30"), seed=0)


def test_a_remainder_with_too_few_spare_classes_is_an_error():
    labels = torch.tensor([0] * 2 + [1] * 2 + [2] * 100)
    with pytest.raises(SimCLRv2Error, match="only 1 classes have more than 2 images"):
        select_subset(labels, parse_subset_spec("8"), seed=0)


# ------------------------------------------------------------------------------------- list files


def test_written_subset_reads_back_to_the_same_indices(tmp_path):
    data = dataset(balanced_labels(200, 4))
    chosen = subset_indices(data, "10%", seed=2)
    path = tmp_path / "run" / "labelled.txt"
    write_subset_file(path, data, chosen, seed=2, spec="10%")
    assert read_subset_file(path) == [data.ids[i] for i in chosen.tolist()]
    assert torch.equal(subset_indices(data, str(path), seed=99), chosen)  # the seed plays no part for a list
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any("toy/train" in line and "20 images" in line for line in header)
    assert any("seed: 2" in line for line in header)


def test_list_files_ignore_blank_lines_and_comments_and_take_folder_ids(tmp_path):
    labels = torch.tensor([0, 0, 1, 1])
    data = ImageDataset(images=torch.zeros(4, 1, 1, 1, dtype=torch.uint8), labels=labels,
                        classes=("cat", "dog"), ids=("cat/1.jpg", "cat/2.jpg", "dog/1.jpg", "dog/2.jpg"),
                        name="pets/train")
    path = tmp_path / "pets.txt"
    path.write_text("# two labelled pets\n\ndog/2.jpg\n  cat/1.jpg  \n# end\n")
    assert subset_indices(data, str(path), seed=0).tolist() == [0, 3]


def test_unknown_ids_are_an_error_naming_three_and_the_count(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("00001\nnope1\nnope2\nnope3\nnope4\n")
    with pytest.raises(SimCLRv2Error, match=r"4 of 5 image ids are not in toy/train \(e.g. 'nope1', 'nope2', "
                                            r"'nope3'\)") as error:
        subset_indices(dataset(balanced_labels(20, 2)), str(path), seed=0)
    assert "nope4" not in str(error.value)


def test_duplicate_ids_are_an_error(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("00001\n00002\n00001\n")
    with pytest.raises(SimCLRv2Error, match="'00001' appears twice"):
        subset_indices(dataset(balanced_labels(20, 2)), str(path), seed=0)


def test_an_empty_or_missing_list_file_is_an_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("# nothing here\n\n")
    with pytest.raises(SimCLRv2Error, match="lists no image ids"):
        subset_indices(dataset(balanced_labels(20, 2)), str(path), seed=0)
    with pytest.raises(SimCLRv2Error, match="cannot read label subset file"):
        subset_indices(dataset(balanced_labels(20, 2)), str(tmp_path / "missing.txt"), seed=0)


def test_a_list_file_works_for_unlabeled_data_but_a_fraction_does_not(tmp_path):
    data = dataset(None)
    path = tmp_path / "some.txt"
    path.write_text("00003\n00005\n")
    assert subset_indices(data, str(path), seed=0).tolist() == [3, 5]
    with pytest.raises(SimCLRv2Error, match="needs labelled images"):
        subset_indices(data, "10%", seed=0)


def test_an_existing_different_subset_file_is_never_overwritten(tmp_path):
    data = dataset(balanced_labels(100, 4))
    path = tmp_path / "labelled.txt"
    first = subset_indices(data, "8", seed=0)
    write_subset_file(path, data, first)
    before = path.read_text()
    write_subset_file(path, data, first, seed=0)  # the same ids again: fine, file untouched
    with pytest.raises(SimCLRv2Error, match="already lists a different label subset"):
        write_subset_file(path, data, subset_indices(data, "8", seed=1))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["labelled.txt"]  # no temporary files left behind


def test_ids_that_cannot_be_written_as_lines_are_an_error(tmp_path):
    data = ImageDataset(images=torch.zeros(2, 1, 1, 1, dtype=torch.uint8), labels=None, classes=(),
                        ids=("#hash", "ok"), name="odd")
    with pytest.raises(SimCLRv2Error, match="cannot be written on a line"):
        write_subset_file(tmp_path / "odd.txt", data, torch.tensor([0, 1]))
    assert not (tmp_path / "odd.txt").exists()


def test_list_file_missing_a_class_logs_a_warning_naming_it(tmp_path, caplog):
    ds = dataset(torch.tensor([0, 1, 2, 0, 1, 2]))
    list_file = tmp_path / "labels.txt"
    list_file.write_text(f"{ds.ids[0]}\n{ds.ids[1]}\n")
    with caplog.at_level("WARNING", logger="simclrv2"):
        assert subset_indices(ds, str(list_file), seed=0).tolist() == [0, 1]
    assert len(caplog.records) == 1
    assert "has no image of 1 of its 3 classes ('c2')" in caplog.text


def test_balanced_subset_logs_nothing(caplog):
    with caplog.at_level("WARNING", logger="simclrv2"):
        subset_indices(dataset(balanced_labels(30, 3)), "3/class", seed=0)
    assert caplog.records == []
