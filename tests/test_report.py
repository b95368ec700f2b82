import json
import re
import struct
import subprocess
import sys

import pytest
import torch

from simclrv2.errors import SimCLRv2Error
from simclrv2.report import build_report, pca_2d, projection

CLASSES = ["T-shirt/top", "Trouser", "Pullover"]
ROWS = [  # method, labels, top1, run
    ("supervised-only", "1%", 0.412, "supervised_1"),
    ("supervised-only", "10%", 0.655, "supervised_10"),
    ("linear eval", "1%", 0.601, "linear_1"),
    ("linear eval", "10%", 0.702, "linear_10"),
    ("fine-tuned (head layer 1)", "1%", 0.634, "finetune_1"),
    ("fine-tuned (head layer 1)", "10%", 0.781, "finetune_10"),
    ("distilled student", "10%", 0.7925, "distill_10"),
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_jsonl(path, records, cut_last=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records]
    if cut_last:  # an interrupted run cuts its last line mid-object
        lines.append('{"event": "train", "stage": "pretrain", "epoch": 9.5, "lo')
    path.write_text("\n".join(lines) + ("" if cut_last else "\n"))


def _pretrain_records(epochs=3, steps_per_epoch=4):
    records = [{"event": "knn", "stage": "pretrain", "epoch": 0, "step": 0, "knn_top1": 0.31, "time": 0.0}]
    for step in range(1, epochs * steps_per_epoch + 1):
        records.append({"event": "train", "stage": "pretrain", "epoch": step / steps_per_epoch, "step": step,
                        "loss": 6.0 - 0.2 * step, "lr": 0.1 * min(step, 4) / 4, "pairs_per_s": 100.0,
                        "time": float(step)})
        if step % steps_per_epoch == 0:
            epoch = step // steps_per_epoch
            records.append({"event": "knn", "stage": "pretrain", "epoch": epoch, "step": step,
                            "knn_top1": 0.31 + 0.1 * epoch, "time": float(step)})
    return records


def _make_pipeline(root):
    """A tiny pipeline directory with every file the report reads."""
    root.mkdir()
    summary = {
        "dataset": "fashion-mnist", "architecture": "ResNet-18 1x", "wall_time_s": 3725.0,
        "rows": [{"method": m, "labels": f, "top1": t, "run": r} for m, f, t, r in ROWS],
        "best": {"method": "distilled student", "labels": "10%", "top1": 0.7925, "run": "distill_10"},
        "knn": {"init": 0.31, "final": 0.61},
    }
    (root / "summary.json").write_text(json.dumps(summary))
    _write_jsonl(root / "pretrain" / "metrics.jsonl", _pretrain_records(), cut_last=True)
    (root / "pretrain" / "config.toml").write_text('[data]\ndataset = "fashion-mnist"\n[model]\ndepth = 18\n')
    for method, _, top1, run in ROWS:
        stage = {"supervised-only": "supervised", "linear eval": "evaluate",
                 "distilled student": "distill"}.get(method, "finetune")
        records = [] if stage == "evaluate" else [
            {"event": "eval", "stage": stage, "epoch": e, "step": 10 * e, "test_top1": top1 * e / 3,
             "time": float(e)} for e in range(1, 4)]
        _write_jsonl(root / run / "metrics.jsonl", records)
        matrix = [[8, 1, 1], [0, 10, 0], [2, 3, 5]]
        (root / run / "result.json").write_text(json.dumps({
            "stage": stage, "top1": top1, "per_class": dict(zip(CLASSES, [0.8, 1.0, 0.5], strict=True)),
            "confusion_matrix": matrix, "classes": CLASSES, "num_samples": 30}))
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn(60, 16, generator=gen) + 4 * torch.nn.functional.one_hot(labels, 16).float()
    torch.save({"features": features, "labels": labels, "classes": CLASSES, "source": "test"},
               root / "embeddings.pt")
    return root


def _listing(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _img_sources(page_html):
    return re.findall(r'<img src="([^"]+)"', page_html)


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def pipeline_report(tmp_path_factory):
    root = _make_pipeline(tmp_path_factory.mktemp("report") / "pipeline")
    page = build_report(root)
    return root, page, page.read_text()


def test_page_is_written_into_report_folder(pipeline_report):
    root, page, _ = pipeline_report
    assert page == root / "report" / "index.html" and page.is_file()


def test_every_embedded_png_exists_and_is_a_real_png(pipeline_report):
    root, page, text = pipeline_report
    sources = _img_sources(text)
    assert len(sources) == 6  # every section has its data in the full fixture
    for name in sources:
        path = page.parent / name
        assert path.is_file() and path.stat().st_size > 5000
        width, height = _png_size(path)
        assert width >= 300 and height >= 200
    # and no PNG lies in the folder that the page does not show
    assert sorted(p.name for p in page.parent.glob("*.png")) == sorted(sources)


def test_accuracy_table_lists_every_method_and_fraction_as_percentages(pipeline_report):
    _, _, text = pipeline_report
    table = re.search(r'<table class="acc">.*?</table>', text, re.S).group(0)
    for method, fraction, top1, _ in ROWS:
        assert f">{method}</th>" in table
        assert f"<th>{fraction}</th>" in table
        assert f"{100 * top1:.1f}%" in table
    assert table.index("<th>1%</th>") < table.index("<th>10%</th>")
    assert table.count('class="none"') == 1  # the distilled student has no 1% cell


def test_best_value_of_each_column_is_bold_and_only_it(pipeline_report):
    _, _, text = pipeline_report
    table = re.search(r'<table class="acc">.*?</table>', text, re.S).group(0)
    assert re.findall(r"<strong>([^<]+)</strong>", table) == ["63.4%", "79.2%"]  # 1% column, then 10%


def test_header_and_footer(pipeline_report):
    root, _, text = pipeline_report
    assert "fashion-mnist" in text and "ResNet-18 1x" in text
    assert "1 h 02 min" in text  # 3725 s
    assert f"simclrv2 report {root}" in text
    assert "<script" not in text and "://" not in text  # self-contained: no scripts, no remote files


def test_confusion_matrix_is_of_the_best_run_with_class_names(pipeline_report):
    _, page, text = pipeline_report
    assert (page.parent / "confusion_matrix.png").is_file()
    assert "run distill_10/" in text  # summary.json's best run
    per_class = re.search(r'<table class="acc per-class">.*?</table>', text, re.S).group(0)
    for name, recall in zip(CLASSES, ["80.0%", "100.0%", "50.0%"], strict=True):
        assert f">{name}</th><td>{recall}</td>" in per_class


def test_knn_caption_names_the_random_init_epoch(pipeline_report):
    _, _, text = pipeline_report
    assert "randomly initialised encoder (epoch 0) at 31.0%" in text
    assert "epoch 3 at 61.0%" in text


def test_cut_last_metrics_line_is_tolerated(pipeline_report):
    _, _, text = pipeline_report
    assert "12 records over 3 epochs" in text  # the cut record at epoch 9.5 was skipped


def test_names_from_the_run_are_escaped(tmp_path):
    rows = [{"method": "A&B <baseline>", "labels": "1%", "top1": 0.5, "run": "r"}]
    (tmp_path / "summary.json").write_text(json.dumps({"rows": rows}))
    text = build_report(tmp_path).read_text()
    assert "A&amp;B &lt;baseline&gt;" in text and "<baseline>" not in text
    assert "run directory r/ named in summary.json does not exist" in text  # said plainly, not a crash


def test_nothing_outside_report_folder_is_written(tmp_path):
    root = _make_pipeline(tmp_path / "p")
    before, dirs_before = _listing(tmp_path), {p for p in tmp_path.rglob("*") if p.is_dir()}
    build_report(root)
    after, dirs_after = _listing(tmp_path), {p for p in tmp_path.rglob("*") if p.is_dir()}
    assert dirs_after - dirs_before == {root / "report"}
    added = set(after) - set(before)
    assert all(name.startswith("p/report/") for name in added)
    assert {name: after[name] for name in before} == before  # nothing changed or removed
    assert not [name for name in added if ".tmp" in name]  # no temporary files left


def test_rebuild_removes_a_figure_whose_data_is_gone(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _pretrain_records())
    build_report(tmp_path)
    assert (tmp_path / "report" / "knn_accuracy.png").is_file()
    _write_jsonl(tmp_path / "metrics.jsonl", [r for r in _pretrain_records() if r["event"] == "train"])
    text = build_report(tmp_path).read_text()
    assert not (tmp_path / "report" / "knn_accuracy.png").exists()
    assert "has no kNN records" in text


def test_single_pretrain_run_says_what_is_missing(tmp_path):
    run = tmp_path / "pretrain_only"
    _write_jsonl(run / "metrics.jsonl", _pretrain_records())
    page = build_report(run)
    text = page.read_text()
    assert sorted(_img_sources(text)) == ["knn_accuracy.png", "training_curves.png"]
    for name in _img_sources(text):
        assert (page.parent / name).read_bytes()[:8] == PNG_MAGIC
    assert "single pretrain run" in text
    assert "no summary.json" in text  # no accuracy table
    assert "no fine-tuning, supervised or distillation runs" in text
    assert "has no result.json" in text  # no confusion matrix
    assert "no readable embeddings.pt" in text
    assert text.count('class="missing"') == 4


def test_single_finetune_run_shows_its_own_curves_and_confusion(tmp_path):
    run = tmp_path / "ft"
    _write_jsonl(run / "metrics.jsonl", [
        {"event": "train", "stage": "finetune", "epoch": 0.5 * i, "step": i, "loss": 2.0 / i, "lr": 0.01,
         "pairs_per_s": 1.0, "time": 10.0 * i} for i in range(1, 5)] + [
        {"event": "eval", "stage": "finetune", "epoch": e, "step": 2 * e, "test_top1": 0.5 + 0.1 * e,
         "time": 20.0 * e} for e in (1, 2)])
    (run / "result.json").write_text(json.dumps({"stage": "finetune", "top1": 0.7, "classes": CLASSES,
                                                 "confusion_matrix": [[1, 0, 0], [0, 1, 0], [1, 0, 1]]}))
    text = build_report(run).read_text()
    assert sorted(_img_sources(text)) == ["confusion_matrix.png", "test_accuracy_curves.png",
                                          "training_curves.png"]
    assert "Training loss and learning rate (fine-tuning)" in text
    assert "this run&#x27;s test top-1 is 70.0%" in text
    assert "about 30 s (first to last metrics record)" in text


def test_unreadable_embeddings_are_reported_not_fatal(tmp_path):
    _write_jsonl(tmp_path / "metrics.jsonl", _pretrain_records())
    (tmp_path / "embeddings.pt").write_bytes(b"not a torch file")
    text = build_report(tmp_path).read_text()
    assert "Problems reading the run" in text and "embeddings.pt could not be read" in text
    torch.save({"features": torch.randn(5, 4), "labels": torch.tensor([0, 1, 2, 3, 9]), "classes": ["a", "b"],
                "source": "test"}, tmp_path / "embeddings.pt")
    text = build_report(tmp_path).read_text()
    assert "embeddings.pt is left out: labels must lie in [0, 2)" in text


def test_missing_or_empty_run_dir_raises(tmp_path):
    with pytest.raises(SimCLRv2Error, match="not found"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimCLRv2Error, match="holds no run") as info:
        build_report(tmp_path / "empty")
    assert "\n" not in str(info.value)
    assert list((tmp_path / "empty").iterdir()) == []


def test_unreadable_summary_raises(tmp_path):
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(SimCLRv2Error, match="cannot read .*summary.json"):
        build_report(tmp_path)


def test_without_matplotlib_the_error_says_how_to_install(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _write_jsonl(run / "metrics.jsonl", _pretrain_records())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(SimCLRv2Error, match=r"pip install 'simclrv2\[report\]'"):
        build_report(run)


def test_package_imports_without_importing_matplotlib():
    code = "import sys, simclrv2.report; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _naive_top2(x):
    """Reference: eigenvectors of the covariance matrix with the two largest eigenvalues."""
    x = x.double()
    centred = x - x.mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / (x.shape[0] - 1))  # ascending
    return centred @ eigenvectors[:, [-1, -2]], eigenvectors[:, [-1, -2]]


@pytest.mark.parametrize("m, d, exact_up_to", [(500, 8, 512), (300, 64, 16), (60, 300, 512)],
                         ids=["exact", "subspace-iteration", "fewer-samples-than-dims"])
def test_pca_2d_matches_covariance_eigendecomposition(m, d, exact_up_to, monkeypatch):
    monkeypatch.setattr(projection, "EXACT_UP_TO", exact_up_to)  # small: the iterative path on a small matrix
    gen = torch.Generator().manual_seed(0)
    u1, u2 = torch.linalg.qr(torch.randn(d, 2, generator=gen)).Q.T  # two orthonormal directions
    t = torch.randn(m, 2, generator=gen)
    x = 5 * t[:, :1] * u1 + 2 * t[:, 1:] * u2 + 0.05 * torch.randn(m, d, generator=gen) + 3.0  # off-centre
    coords = pca_2d(x)
    reference, vectors = _naive_top2(x)
    assert coords.shape == (m, 2) and coords.dtype == torch.float32
    assert abs(torch.dot(vectors[:, 0].float(), u1)) > 0.99  # the dominant direction is found
    for j in range(2):  # each column equals the reference up to the (arbitrary) sign of its direction
        sign = torch.sign(torch.dot(coords[:, j].double(), reference[:, j]))
        torch.testing.assert_close(coords[:, j].double(), sign * reference[:, j], atol=1e-3, rtol=1e-4)
    assert coords[:, 0].var() > coords[:, 1].var()


def test_pca_2d_sign_is_fixed_by_the_data_not_the_solver():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 5, generator=gen) * torch.tensor([10.0, 3.0, 0.1, 0.1, 0.1])
    coords, centred = pca_2d(x), x - x.mean(0)
    # the directions are close to ±e1 and ±e2; the convention (largest entry positive) picks +e1 and +e2
    for j in range(2):
        assert torch.corrcoef(torch.stack([coords[:, j], centred[:, j]]))[0, 1] > 0.99
    torch.testing.assert_close(pca_2d(-x), -pca_2d(x), atol=1e-4, rtol=0.0)


def test_pca_2d_rejects_too_few_dimensions():
    with pytest.raises(SimCLRv2Error, match="2 dimensions"):
        pca_2d(torch.randn(10, 1))
