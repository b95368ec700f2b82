"""The HTML report a person opens after a run: training curves, kNN accuracy, accuracy by label fraction,
fine-tuning curves, the best model's confusion matrix and a PCA picture of the embeddings.

``collect`` reads the run (never writes), ``projection`` computes the PCA, ``plots`` draws each figure
(matplotlib, imported lazily: the package works without it), ``sections`` decides what each section shows or
why it is missing, and ``page`` writes ``RUN_DIR/report/index.html``.
"""

from __future__ import annotations

from simclrv2.report.page import build_report
from simclrv2.report.projection import pca_2d

__all__ = ["build_report", "pca_2d"]
