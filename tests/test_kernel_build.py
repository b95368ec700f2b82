"""How the compiled CPU kernels are built: every kernel file reaches the compiler once, and the cache name of a build
changes with any file it reads, so a machine never loads a stale library after an upgrade."""

from __future__ import annotations

import re
import shutil

from simclrv2.models import cpu_kernels


def _included_sources(source: str) -> list[str]:
    return re.findall(r'^#include "([^"]+\.cpp)"', source, flags=re.MULTILINE)


def test_every_kernel_file_is_compiled_exactly_once():
    compiled = list(cpu_kernels.SOURCE_NAMES)
    for name in cpu_kernels.SOURCE_NAMES:
        compiled += _included_sources((cpu_kernels.KERNEL_DIR / name).read_text())
    on_disk = sorted(path.name for path in cpu_kernels.KERNEL_DIR.glob("*.cpp"))
    assert sorted(compiled) == on_disk


def test_the_build_name_changes_with_a_file_that_is_only_included(tmp_path, monkeypatch):
    kernel_dir = tmp_path / "kernels"
    shutil.copytree(cpu_kernels.KERNEL_DIR, kernel_dir)
    monkeypatch.setattr(cpu_kernels, "KERNEL_DIR", kernel_dir)
    before = cpu_kernels._build_name()
    assert cpu_kernels._build_name() == before  # the name is a function of the files, not of the call
    included = _included_sources((kernel_dir / "extension.cpp").read_text())
    assert "sum.cpp" in included and "sum.cpp" not in cpu_kernels.SOURCE_NAMES
    with (kernel_dir / "sum.cpp").open("a") as source:
        source.write("// an edit\n")
    after_source = cpu_kernels._build_name()
    with (kernel_dir / "kernels.h").open("a") as header:
        header.write("// an edit\n")
    assert len({before, after_source, cpu_kernels._build_name()}) == 3


def test_the_build_name_changes_with_the_compiler(monkeypatch):
    """A library gcc built is not loaded for a session told to build with clang (``CXX``), nor the reverse."""
    monkeypatch.delenv("CXX", raising=False)
    default = cpu_kernels._build_name()
    monkeypatch.setenv("CXX", "c++")
    assert cpu_kernels._build_name() == default  # torch's default compiler, named or not
    monkeypatch.setenv("CXX", "clang++")
    assert cpu_kernels._build_name() != default
