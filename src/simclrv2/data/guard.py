"""The test split stays closed while a stage trains and chooses: only the stage's final evaluation opens it.

A stage runs with its test split sealed (:func:`sealed`) and opens it once, for its final evaluation
(:func:`final_evaluation`). The readers (``load_dataset`` and the streaming file index) call :func:`check_read`
for every split they read, so a read of the sealed split anywhere else in the stage, in whatever module the
stage calls, is an error instead of a silent leak of test images into a choice. Outside a stage (inference,
a notebook) nothing is sealed and every split reads freely.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from simclrv2.errors import SimCLRv2Error


class SealedSplitError(SimCLRv2Error):
    """A stage read its test split before its final evaluation: a fault of the stage's code or of a config whose
    training split is its test split, never a missing split to step around."""


@dataclass(eq=False)
class _Seal:
    split: str  # the split name sealed, e.g. "test"
    stage: str  # for messages
    opened: bool = False  # the final evaluation has begun (it happens once)
    reading: bool = False  # inside the final evaluation now


# Why a context variable rather than a guard object handed down: the reads happen several calls below the stage
# (training_data, load_split, load_dataset, the streaming index, the pipeline's embeddings), and a guard that
# every function on the way had to pass along would protect only the paths that remembered to pass it; the
# read it exists to catch is the one on a path that forgot. The variable is set and reset by ``with`` blocks
# (nothing stays changed once a stage returns, and nested stages restore their caller's seal), is local to its
# thread, and only check_read acts on it: the same pattern as torch's grad mode or decimal's localcontext.
_SEAL: ContextVar[_Seal | None] = ContextVar("simclrv2_sealed_test_split", default=None)


@contextmanager
def sealed(split: str, stage: str) -> Iterator[None]:
    """Within this block, reading ``split`` fails except inside one :func:`final_evaluation` block."""
    token = _SEAL.set(_Seal(split, stage))
    try:
        yield
    finally:
        _SEAL.reset(token)


@contextmanager
def final_evaluation() -> Iterator[None]:
    """The stage's final evaluation: the only place its sealed split may be read, once per stage."""
    seal = _SEAL.get()
    if seal is None:  # not inside a stage: there is nothing to open
        yield
        return
    if seal.opened:
        raise SealedSplitError(f"{seal.stage} opened its final evaluation twice; the test split is read once, at "
                               "the end, so that nothing is chosen on it")
    seal.opened = seal.reading = True
    try:
        yield
    finally:
        seal.reading = False


def sealed_split() -> str | None:
    """The split sealed here (None outside a stage)."""
    seal = _SEAL.get()
    return seal.split if seal is not None else None


def in_final_evaluation() -> bool:
    """Whether a stage's final evaluation is under way here."""
    seal = _SEAL.get()
    return seal is not None and seal.reading


def check_read(dataset: str, split: str) -> None:
    """Raises when ``split`` of ``dataset`` is the sealed test split and the final evaluation is not under way."""
    seal = _SEAL.get()
    if seal is not None and split == seal.split and not seal.reading:
        raise SealedSplitError(f"{seal.stage} read the test split {dataset}/{split} before its final evaluation; "
                               "a stage trains and chooses on other splits only (data.train_split must differ "
                               "from data.test_split)")
