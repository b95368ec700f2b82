"""Image collections larger than memory: a cached file index, decode-time crops in DataLoader workers, and
WebDataset shards, all feeding the engine one step's crops at a time (see ``choose_stream``)."""

from __future__ import annotations

from simclrv2.data.streaming.decode import CropDataset, ImageSource, decode_crops
from simclrv2.data.streaming.index import FileIndex, folder_index
from simclrv2.data.streaming.loader import BatchSource, StepSampler, default_workers
from simclrv2.data.streaming.select import StreamData, choose_stream

__all__ = [
    "BatchSource",
    "CropDataset",
    "FileIndex",
    "ImageSource",
    "StepSampler",
    "StreamData",
    "choose_stream",
    "decode_crops",
    "default_workers",
    "folder_index",
]
