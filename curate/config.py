"""A TOML table turned into a stage's options dataclass, with clear errors for unknown keys and types."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

from curate.errors import InvalidArgument

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed file; InvalidArgument naming the line when it is not valid TOML."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise InvalidArgument(f"no config file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"{path} is not valid TOML: {exc}") from None


def build(cls: type, table: dict[str, Any], where: str) -> Any:
    """`cls(**table)`, with nested dataclasses from sub-tables, tuples from arrays and Paths from strings.

    `where` names the table in errors ("[embed]", "[embed.train]").
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - names)
    if unknown:
        raise InvalidArgument(f"{where}: unknown key {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    values = {key: _coerce(hints[key], value, f"{where[:-1]}.{key}]") for key, value in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where}: {exc}") from None


def _coerce(hint: Any, value: Any, where: str) -> Any:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if isinstance(value, str) and str in options:
        return value  # a hub id or a path: the stage tells them apart
    for option in options:
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return build(option, value, where)
        if option is Path and isinstance(value, str):
            return Path(value).expanduser()
        if typing.get_origin(option) is tuple and isinstance(value, list):
            return tuple(value)
    if isinstance(value, dict):
        raise InvalidArgument(f"{where}: a table is not allowed here")
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
