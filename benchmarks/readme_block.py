"""Writes a generated block into README.md between ``<!-- ID -->`` and ``<!-- /ID -->`` markers, so a benchmark
rewrites its own table and nothing else."""

from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def write_readme(block_id: str, command: str, text: str, readme: Path = README) -> None:
    """Replaces the block ``block_id`` (or appends it) with the command that made it and its text."""
    start, end = f"<!-- {block_id} -->", f"<!-- /{block_id} -->"
    content = readme.read_text()
    block = f"{start}\n`{command}`\n\n{text}\n{end}"
    if start in content:
        head, rest = content.split(start, 1)
        content = head + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(content)
