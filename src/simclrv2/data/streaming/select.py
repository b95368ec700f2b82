"""In memory or streamed: the choice, made from the file index before any pixel is decoded, and said once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from simclrv2.data.folder import MAX_AUTO_SIZE, Probe, choose_format, probe_image
from simclrv2.data.streaming.decode import ImageSource
from simclrv2.data.streaming.index import folder_index
from simclrv2.data.streaming.loader import default_workers
from simclrv2.errors import SimCLRv2Error
from simclrv2.logs import get_logger

STREAMED = ("folder", "webdataset")
RAM_SHARE = 4  # auto streams when the decoded images would take more than 1/RAM_SHARE of the machine's RAM
PROBE_SAMPLE = 256  # image headers read to choose a streamed folder's size and channels


@dataclass(frozen=True, eq=False)
class StreamData:
    """A training split read step by step: where the images are, and the size and channels of the crops."""

    source: ImageSource
    image_size: int
    channels: int
    name: str
    workers: int

    def __len__(self) -> int:
        return len(self.source)


def physical_memory() -> int:
    """Bytes of RAM (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def choose_stream(data) -> StreamData | None:
    """The streamed training split, or None for the in-memory path; logs one line saying which and why."""
    log = get_logger()
    if data.dataset not in STREAMED:
        if data.stream == "stream":
            raise SimCLRv2Error(f"data.stream = 'stream' reads image folders and WebDataset shards; {data.dataset} "
                                "is read into memory: set data.stream = 'auto' or 'memory'")
        log.info(f"data: in memory ({data.dataset} is read whole from its files)")
        return None
    if not data.data_dir:
        raise SimCLRv2Error(f"the {data.dataset} dataset reads data.data_dir; set it to the folder of images "
                            "or of shards")
    workers = default_workers() if data.workers < 0 else data.workers
    if data.dataset == "webdataset":
        if data.stream == "memory":
            raise SimCLRv2Error("WebDataset shards are only streamed; set data.stream = 'auto' or 'stream'")
        from simclrv2.data.streaming.shards import shard_index

        source = shard_index(data.data_dir)
        size = data.image_size or MAX_AUTO_SIZE  # shards are not probed: data.image_size chooses
        log.info(f"data: streaming {len(source)} images from the WebDataset shards in {data.data_dir} "
                 f"({workers} workers, {size} px{'' if data.image_size else ': set data.image_size to change'})")
        return StreamData(source, size, data.channels or 3, f"webdataset/{Path(data.data_dir).name}", workers)
    if data.stream == "memory":
        log.info("data: in memory (data.stream = 'memory')")
        return None
    source = folder_index(data.data_dir, data.train_split)
    n = len(source)
    if data.train_limit:
        raise SimCLRv2Error("data.train_limit is for in-memory data; set data.stream = 'memory' to use it, or "
                            "point data.data_dir at a smaller folder")
    size, channels, chosen = _folder_format(source, data)
    decoded, ram = n * 3 * size * size, physical_memory()
    if data.stream == "stream":
        why = "data.stream = 'stream'"
    elif n > data.stream_above:
        why = f"{n} images > data.stream_above = {data.stream_above}"
    elif ram and decoded * RAM_SHARE > ram:
        why = f"decoded they would take {_gb(decoded)}, over a quarter of the {_gb(ram)} of RAM"
    else:
        log.info(f"data: in memory ({n} images, {_gb(decoded)} decoded: at most data.stream_above = "
                 f"{data.stream_above} and under a quarter of the RAM)")
        return None
    log.info(f"data: streaming {n} images from {source.root} ({why}), cropped at decode time in {workers} "
             f"worker{'s' if workers != 1 else ''}; {size} px, {channels} channel{'s' if channels > 1 else ''}{chosen}")
    return StreamData(source, size, channels, f"folder/{data.train_split}", workers)


def _folder_format(source, data) -> tuple[int, int, str]:
    """(size, channels, why) of a streamed folder: as configured, else chosen as for in-memory folders from the
    headers of an evenly spread sample of its images (no pixel is decoded)."""
    if data.image_size and data.channels:
        return data.image_size, data.channels, ""
    n = len(source)
    count = min(n, PROBE_SAMPLE)
    picks = [i * n // count for i in range(count)]
    probes = [probe_image(source.path(i)) for i in picks]
    readable = [p for p in probes if isinstance(p, Probe)]
    if not readable:
        raise SimCLRv2Error(f"none of {len(picks)} sampled images in {source.root} can be opened (first: "
                            f"{probes[0]}); check the folder, or set data.image_size and data.channels")
    size, channels, why = choose_format(readable, data.image_size or None, data.channels or None)
    return size, channels, f" (from {len(readable)} sampled images: {why})"
