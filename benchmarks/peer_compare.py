"""Runs the peer harness (lightly 1.6.0, in the shared bench folder) beside our throughput benchmark and
prints the ratios ours / lightly. The shared scripts are called, never copied: they live in their own virtual
environment (``setup_peers.sh``), which needs a torch/torchvision pair other than ours.

Plain standard library, so ``tests/test_bench_peers.py`` can check the matching and the printed table on fake lines.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

PEER_SCRIPT = "lightly_simclr_throughput.py"
PEER_ARCH = {0.25: "resnet18w025", 1.0: "resnet18"}  # our width -> the harness's --arch
PHASES = (("e2e", "end to end"), ("model_only", "model step"), ("data_only", "data only"))
DEFAULT_PEER_PYTHON = Path.home() / ".cache" / "simclrv2-peers-venv" / "bin" / "python"


def peer_ready(peer_bench: Path, peer_python: Path) -> str | None:
    """None when the peer harness can run, else one line saying how to set it up."""
    if not (peer_bench / PEER_SCRIPT).is_file():
        return f"no peer comparison: {peer_bench / PEER_SCRIPT} not found (set PEER_BENCH to the shared bench folder)"
    if not os.access(peer_python, os.X_OK):
        return (f"no peer comparison: {peer_python} not found; set it up once with `bash {peer_bench}/setup_peers.sh`"
                " (about 5.5 GB), then run `make bench` again")
    return None


def run_peer(peer_bench: Path, peer_python: Path, width: float, data_dir: str | None = None) -> dict:
    """One configuration of the peer harness (0 DataLoader workers, as our benchmark); its JSON line, or
    ``{"error": ...}`` when it fails (our numbers are still worth printing)."""
    arch = PEER_ARCH.get(width)
    if arch is None:
        return {"error": f"the peer harness has no width {width:g} (only {', '.join(map(str, PEER_ARCH))})"}
    env = {**os.environ, **({"FMNIST_DIR": data_dir} if data_dir else {})}
    command = [str(peer_python), PEER_SCRIPT, "--arch", arch, "--workers", "0", "--phases", "data,e2e,model"]
    done = subprocess.run(command, cwd=peer_bench, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"peer harness failed for {arch} (exit {done.returncode}): {last}"}
    return json.loads(lines[-1])


def ratio_table(ours: Sequence[dict], peers: Sequence[dict]) -> str:
    """Pairs/s of each of our configurations against the peer at the same width, and the ratio ours / peer.

    With several rounds (``--rounds``: ours then the peer at each width, again and again) each side is the median of
    its rounds, and the ratios of the rounds taken pairwise (round k of ours against round k of the peer) are given as
    a range (rounds matched by their ``round`` field; a round whose peer run failed has no pair): on a machine whose
    speed moves between processes, one pair of runs can be off by a fifth."""
    peer_width = {arch: width for width, arch in PEER_ARCH.items()}
    peer_rounds: dict[float, list[dict]] = {}
    for p in peers:
        if p.get("arch") in peer_width:
            peer_rounds.setdefault(peer_width[p["arch"]], []).append(p)
    our_rounds: dict[tuple, list[dict]] = {}
    for line in ours:
        our_rounds.setdefault((line["width"], line["arch"], line["precision"], bool(line.get("compile"))),
                              []).append(line)
    rounds = max([len(v) for v in our_rounds.values()] + [1])
    lines = ["pairs/s, ours vs lightly 1.6.0 on this machine (ratio > 1: ours is faster)"
             + (f"; medians of {rounds} rounds, and the range of the rounds' paired ratios" if rounds > 1 else ""),
             f"{'configuration':<26} {'phase':<11} {'ours':>9} {'lightly':>9} {'ratio':>7}"]
    for (width, arch, precision, compiled), mine_rounds in our_rounds.items():
        theirs_rounds = peer_rounds.get(width)
        if not theirs_rounds:
            lines.append(f"{arch} {precision}: no peer measurement at this width")
            continue
        name = f"{arch} {precision}{' compiled' if compiled else ''}"
        for key, label in PHASES:
            mine = statistics.median(r[key]["pairs_per_s"] for r in mine_rounds)
            theirs = statistics.median(r[key]["pairs_per_s"] for r in theirs_rounds)
            row = f"{name:<26} {label:<11} {mine:>9.1f} {theirs:>9.1f} {mine / theirs:>6.2f}x"
            mine_by_round = {r.get("round", i): r[key]["pairs_per_s"] for i, r in enumerate(mine_rounds)}
            theirs_by_round = {r.get("round", i): r[key]["pairs_per_s"] for i, r in enumerate(theirs_rounds)}
            paired = [mine_by_round[k] / theirs_by_round[k] for k in mine_by_round if k in theirs_by_round]
            if len(paired) > 1:
                row += f"  ({min(paired):.2f}-{max(paired):.2f}x)"
            lines.append(row)
            name = ""
    return "\n".join(lines)
