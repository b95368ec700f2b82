"""The kNN monitor against a per-query loop written from its definition, and feature extraction."""

from __future__ import annotations

import math

import pytest
import torch

from simclrv2.errors import SimCLRv2Error
from simclrv2.eval import knn as knn_module
from simclrv2.eval.knn import extract_features, knn_accuracy, knn_predict


def naive_knn(train: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
              k: int, temperature: float) -> torch.Tensor:
    """Per query: cosine similarity to every training feature, the k largest, votes weighted by exp(s/τ)."""
    preds = []
    for q in queries.double():
        sims = [float(q @ t.double() / (q.norm() * t.double().norm())) for t in train]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[: min(k, len(sims))]
        votes = [0.0] * num_classes
        for i in nearest:
            votes[int(train_labels[i])] += math.exp(sims[i] / temperature)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))  # first maximum, like argmax
    return torch.tensor(preds)


def random_bank(seed: int, n_train: int = 120, n_query: int = 40, dim: int = 8, num_classes: int = 5):
    g = torch.Generator().manual_seed(seed)
    train = torch.randn(n_train, dim, generator=g) * torch.rand(n_train, 1, generator=g) * 3  # varied norms
    labels = torch.randint(0, num_classes, (n_train,), generator=g)
    queries = torch.randn(n_query, dim, generator=g)
    return train, labels, queries


@pytest.mark.parametrize(("k", "temperature"), [(200, 0.1), (10, 0.1), (1, 0.5), (25, 1.0), (7, 0.02)])
def test_knn_matches_the_naive_loop(k, temperature):
    train, labels, queries = random_bank(seed=k)
    expected = naive_knn(train, labels, queries, 5, k, temperature)
    assert torch.equal(knn_predict(train, labels, queries, 5, k=k, temperature=temperature), expected)


def test_knn_votes_are_weighted_by_similarity_not_counted():
    # Two near neighbours of class 1 outvote three far ones of class 0 only because they are closer.
    train = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]])
    labels = torch.tensor([1, 1, 0, 0, 0])
    query = torch.tensor([[1.0, 0.4]])
    assert knn_predict(train, labels, query, 2, k=5, temperature=0.1).tolist() == [1]
    assert knn_predict(train, labels, query, 2, k=5, temperature=100.0).tolist() == [0]  # ~ plain count


def test_chunking_does_not_change_predictions():
    train, labels, queries = random_bank(seed=5, n_query=101)
    full = knn_predict(train, labels, queries, 5, k=30)
    for chunk_size in (1, 7, 100, 1000):
        assert torch.equal(knn_predict(train, labels, queries, 5, k=30, chunk_size=chunk_size), full)


def test_a_large_bank_shrinks_the_chunks_without_changing_predictions(monkeypatch):
    train, labels, queries = random_bank(seed=4)
    expected = knn_predict(train, labels, queries, 5, k=30)
    monkeypatch.setattr(knn_module, "_MAX_SIMILARITIES", 3 * train.shape[0])  # three queries at a time
    assert torch.equal(knn_predict(train, labels, queries, 5, k=30), expected)


def test_k_larger_than_the_bank_uses_the_whole_bank():
    train, labels, queries = random_bank(seed=6, n_train=15)
    expected = naive_knn(train, labels, queries, 5, 15, 0.1)
    assert torch.equal(knn_predict(train, labels, queries, 5, k=200), expected)


def test_features_need_not_be_normalised():
    train, labels, queries = random_bank(seed=7)
    scaled = train * torch.linspace(0.1, 50, train.shape[0]).unsqueeze(1)
    assert torch.equal(knn_predict(scaled, labels, queries * 9, 5), knn_predict(train, labels, queries, 5))


def test_small_temperatures_do_not_overflow():
    train, labels, queries = random_bank(seed=8)
    expected = naive_knn(train, labels, queries, 5, 1, 0.1)  # τ -> 0 is a 1-nearest-neighbour vote
    assert torch.equal(knn_predict(train, labels, queries, 5, k=20, temperature=1e-4), expected)


def test_well_separated_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(6, 16) * 10
    train_labels = torch.arange(300) % 6
    query_labels = torch.arange(90) % 6
    train = centres[train_labels] + torch.randn(300, 16, generator=g)
    queries = centres[query_labels] + torch.randn(90, 16, generator=g)
    assert knn_accuracy(train, train_labels, queries, query_labels, 6) == 1.0


def test_knn_accuracy_scores_the_predictions():
    train, labels, queries = random_bank(seed=9)
    preds = naive_knn(train, labels, queries, 5, 200, 0.1)
    query_labels = preds.clone()
    query_labels[:10] = (query_labels[:10] + 1) % 5  # exactly 10 of 40 wrong
    assert knn_accuracy(train, labels, queries, query_labels, 5) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t, y, q: knn_predict(t, y, q[:, :3], 5), "train features have 8 dimensions but queries 3"),
        (lambda t, y, q: knn_predict(t[:0], y[:0], q, 5), "memory bank is empty"),
        (lambda t, y, q: knn_predict(t, y, q, 3), r"train labels must lie in \[0, 3\)"),
        (lambda t, y, q: knn_predict(t, y, q, 5, k=0), "k >= 1"),
        (lambda t, y, q: knn_accuracy(t, y, q, y[:3], 5), "expected 40 query labels"),
    ],
)
def test_bad_knn_inputs_are_errors(call, message):
    with pytest.raises(SimCLRv2Error, match=message):
        call(*random_bank(seed=10))


# ------------------------------------------------------------------------------------ extract_features


def tiny_images(n: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g)


def test_extract_features_matches_calling_forward_on_scaled_batches():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 6 * 6, 4))
    images = tiny_images(10)
    seen_batches = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen_batches.append(x.shape[0])
        return model(x)

    features = extract_features(forward, images, batch_size=4)
    assert features.dtype == torch.float32 and features.shape == (10, 4) and features.device.type == "cpu"
    assert seen_batches == [4, 4, 2]
    with torch.no_grad():
        expected = model(images.float() / 255)
    torch.testing.assert_close(features, expected)
    assert not features.requires_grad


def test_extract_features_applies_the_transform_after_scaling():
    images = tiny_images(5)

    def centre(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.max() <= 1.0  # scaled to [0, 1] before the transform
        return x[:, :, 1:5, 1:5]

    features = extract_features(lambda x: x.flatten(1), images, batch_size=2, transform=centre)
    torch.testing.assert_close(features, (images.float() / 255)[:, :, 1:5, 1:5].flatten(1))


def test_extract_features_returns_float32_under_autocast():
    linear = torch.nn.Linear(3 * 6 * 6, 4)
    dtypes = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        out = linear(x.flatten(1))
        dtypes.append(out.dtype)
        return out

    features = extract_features(forward, tiny_images(3), autocast_dtype=torch.bfloat16)
    assert dtypes == [torch.bfloat16] and features.dtype == torch.float32
    with torch.no_grad():
        expected = linear((tiny_images(3).float() / 255).flatten(1))
    torch.testing.assert_close(features, expected, atol=0.05, rtol=0.05)


def test_extract_features_rejects_float_images_and_unpooled_outputs():
    with pytest.raises(SimCLRv2Error, match="expects uint8"):
        extract_features(lambda x: x.flatten(1), tiny_images(2).float())
    with pytest.raises(SimCLRv2Error, match="must return \\(B, D\\)"):
        extract_features(lambda x: x, tiny_images(2))
