"""The configs shipped inside the package, so ``--config demo`` works from an installed wheel too."""

from __future__ import annotations

from pathlib import Path

from simclrv2.errors import SimCLRv2Error

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the shipped configs (``demo``, ``fashion_mnist_cpu``, ...)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))


def resolve_config(value: str | Path) -> Path:
    """An existing file as given; else a bare name (no folder, no ``.toml``) names a shipped config."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.suffix == "" and path.parent == Path(".") and (SHIPPED_DIR / f"{path.name}.toml").is_file():
        return SHIPPED_DIR / f"{path.name}.toml"
    raise SimCLRv2Error(f"config file {value} not found; pass a TOML file or the name of a shipped config: "
                        f"{', '.join(shipped_configs())}")
