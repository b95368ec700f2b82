"""``simclrv2 import``: the authors' released SimCLRv2 networks, from their TensorFlow checkpoints to our runs.

The steps, one module each: ``reader`` opens a TF1 checkpoint or a TF2 SavedModel and lists its variables by
name (TensorFlow, an optional extra, is imported only there); ``names`` sorts the names into the network's
parts and the rules that skip training state; ``architecture`` recognises the network from the shapes and lists
our layers in the order TensorFlow created its variables; ``convert`` builds our state dict and writes the run.
"""

from __future__ import annotations

from simclrv2.tf_import.convert import ImportResult, import_checkpoint

__all__ = ["ImportResult", "import_checkpoint"]
