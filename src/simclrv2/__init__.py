"""simclrv2: SimCLRv2 (Chen et al., 2020, arXiv 2006.10029) in PyTorch."""

from __future__ import annotations

from simclrv2.errors import SimCLRv2Error

__all__ = ["SimCLRv2Error"]
__version__ = "0.1.0"
