"""The HTML report of a run: ``collect`` reads its typed files, ``plots`` draws (matplotlib, imported lazily),
``sections`` decides what each section shows or why it is missing, ``page`` writes ``RUN_DIR/report/``."""

from __future__ import annotations

from simclrv2.report.page import build_report
from simclrv2.report.plots import pca_2d

__all__ = ["build_report", "pca_2d"]
