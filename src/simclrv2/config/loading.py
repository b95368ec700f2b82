"""Loading a :class:`Config`: TOML file, then ``section.key`` overrides; unknown keys list the valid ones."""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from simclrv2.config.sections import Config, _check
from simclrv2.config.shipped import resolve_config
from simclrv2.errors import SimCLRv2Error

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _sections(cls: type = Config) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _field_types(section_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _is_table(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _flatten(prefix: str, section: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, kind in _field_types(type(section)).items():
        value = getattr(section, key)
        if _is_table(kind):
            values.update(_flatten(f"{prefix}.{key}", value))
        else:
            values[f"{prefix}.{key}"] = value
    return values


def option_defaults(cls: type = Config) -> dict[str, Any]:
    """Every option as ``{"section.key": default}`` (nested tables as ``section.table.key``): what --help lists."""
    defaults = cls()
    values: dict[str, Any] = {}
    for section in _sections(cls):
        values.update(_flatten(section, getattr(defaults, section)))
    return values


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise ValueError


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return value


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _to_tuple(name: str, value: Any, kind: Any) -> tuple:
    """A TOML array, or on the command line a comma-separated list; ``tuple[T, ...]`` takes any length."""
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    args = typing.get_args(kind)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(name, v, args[0]) for v in items)
    if len(items) != len(args):
        raise ValueError
    return tuple(_coerce(name, v, a) for v, a in zip(items, args, strict=True))


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """Turns a TOML value or a command-line string into the field's type, or says what was expected."""
    if kind not in _SCALARS and typing.get_origin(kind) is not tuple:
        raise SimCLRv2Error(f"{name}: unsupported option type {kind}")
    try:
        return _SCALARS[kind](value) if kind in _SCALARS else _to_tuple(name, value, kind)
    except (TypeError, ValueError):
        expected = getattr(kind, "__name__", str(kind))
        raise SimCLRv2Error(f"{name} = {value!r} is not a valid {expected}") from None


def _known(keys: typing.Iterable[str]) -> str:
    return ", ".join(sorted(keys))


def _build_table(name: str, table_cls: type, given: Any, defaults: Any = None) -> Any:
    """One table: unknown keys list the valid ones; validation errors name the table. A nested table starts from
    its parent's default (``[finetune.optimizer]`` keeps fine-tuning's own defaults for the keys not given)."""
    _check(isinstance(given, dict), f"[{name}] must be a table of key = value pairs")
    types = _field_types(table_cls)
    for key in given:
        _check(key in types, f"unknown option {name}.{key}; valid options in [{name}]: {_known(types)}")
    kwargs = {}
    for key, value in given.items():
        kind = types[key]
        if _is_table(kind):
            parent = defaults if defaults is not None else table_cls()
            kwargs[key] = _build_table(f"{name}.{key}", kind, value, getattr(parent, key))
        else:
            kwargs[key] = _coerce(f"{name}.{key}", value, kind)
    try:
        return dataclasses.replace(defaults, **kwargs) if defaults is not None else table_cls(**kwargs)
    except SimCLRv2Error as exc:
        if name.count(".") and not str(exc).startswith(name):  # a nested table's message names only its own key
            raise SimCLRv2Error(f"[{name}]: {exc}") from None
        raise
    except (TypeError, ValueError) as exc:  # validation inside a section
        raise SimCLRv2Error(f"[{name}]: {exc}") from exc


def build_config(values: dict[str, dict[str, Any]], cls: type = Config) -> Any:
    """Builds a config from ``{section: {key: value}}``; unknown sections or keys list the valid ones."""
    sections = _sections(cls)
    for section in values:
        _check(section in sections, f"unknown config section [{section}]; valid sections: {_known(sections)}")
    return cls(**{section: _build_table(section, section_cls, values.get(section, {}))
                  for section, section_cls in sections.items()})


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    _check(path.is_file(), f"config file {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SimCLRv2Error(f"config file {path} is not valid TOML: {exc}") from exc


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                cls: type = Config) -> Any:
    """Defaults, then the TOML file (or shipped config, by name: ``load_config("demo")``), then
    ``{"section.key": value}`` overrides (command line)."""
    values: dict[str, dict[str, Any]] = read_toml(resolve_config(path)) if path else {}
    for dotted, value in (overrides or {}).items():
        *tables, key = dotted.split(".")
        _check(bool(tables) and bool(key), f"override {dotted!r} must look like section.key")
        target = values
        for table in tables:
            target = target.setdefault(table, {})
            _check(isinstance(target, dict), f"override {dotted!r}: {table} is not a table")
        target[key] = value
    return build_config(values, cls)


def config_to_dict(config: Any) -> dict[str, dict[str, Any]]:
    return {name: dataclasses.asdict(getattr(config, name)) for name in _sections(type(config))}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SimCLRv2Error(f"cannot write {value!r} to TOML")


def _toml_table(name: str, values: dict[str, Any], lines: list[str]) -> None:
    lines.append(f"[{name}]")
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if key not in tables]
    lines.append("")
    for key, table in tables.items():
        _toml_table(f"{name}.{key}", table, lines)


def to_toml(config: Any, sections: typing.Iterable[str] | None = None) -> str:
    """The resolved config as TOML (written to every run directory, reloadable with load_config)."""
    as_dict = config_to_dict(config)
    lines: list[str] = []
    for section in sections or as_dict:
        _toml_table(section, as_dict[section], lines)
    return "\n".join(lines)
