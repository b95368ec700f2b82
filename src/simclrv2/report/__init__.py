"""The HTML report a person opens after a run: loss and learning-rate curves, the kNN curve, accuracy by
number of labels, validation curves, the best row's confusion matrix on validation, a PCA picture of the
embeddings and the augmentation preview.

``collect`` reads the run's typed files (never writes), ``plots`` draws each figure (matplotlib, imported
lazily: the package works without it), ``sections`` decides what each section shows or why it is missing, and
``page`` writes ``RUN_DIR/report/index.html``.
"""

from __future__ import annotations

from simclrv2.report.page import build_report
from simclrv2.report.plots import pca_2d

__all__ = ["build_report", "pca_2d"]
