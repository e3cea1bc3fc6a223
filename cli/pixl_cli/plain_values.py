"""Command-line values converted without pydantic, for the plain types PIXL's commands take.

typer 0.29 converts every parameter of the command being run through a pydantic ``TypeAdapter``
that it builds on the spot: importing pydantic and building the adapters cost ~50 ms CPU in
every ``pixl`` process that runs a command (``python -X importtime``; issue 12), a seventh of
the whole ``pixl anonymise`` of 16 films and more than that command's goal leaves for the CLI.

Every parameter of PIXL's commands is a ``str``, ``int``, ``float``, ``bool``, ``Path`` or a list
of one of them. For those, ``PlainCoercionGroup`` gives each parameter of the command being run
a converter that takes the common, unambiguous spellings directly (``"12"`` for an ``int``, a
name for a ``Path``, which then goes through typer's own ``coerce_cli_path`` checks) and hands
anything else (``"x"`` or ``" 3"`` for an ``int``, ``"nan"`` for a ``float``) to typer's own
pydantic converter. So every value converts to what typer would have given, and every bad value
fails with typer's own message; only the common case skips pydantic. A parameter of another type
or with typer constraints (``min``, ``max``, a ``parser``) keeps typer's converter.

This relies on typer 0.29's internals (``typer._coercion``, ``coerce_cli_path``, the
per-parameter ``_runtime_param`` slot); if an upgrade renames them, every parameter keeps
typer's converter (correct, only slower), and ``tests/unit/test_cli_startup.py`` fails on
pydantic being imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from typer.core import TyperGroup

try:  # typer internals (0.29): without them, typer converts every value itself
    from typer._coercion import RuntimeParam, build_runtime_param
    from typer._param_types import coerce_cli_path
    from typer.core import _TyperParameter
except ImportError:  # pragma: no cover - another typer
    RuntimeParam = _TyperParameter = None  # type: ignore[assignment,misc]

# ASCII digits only: pydantic refuses other scripts' digits, which int() would take.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_PLAIN = (str, int, float, bool, Path)


class _NotPlain(Exception):
    """The value needs typer's own converter (to convert it, or to say why it cannot)."""


def _plain(annotation: type, value: Any) -> Any:
    """``value`` as ``annotation`` when its spelling leaves no doubt; else ``_NotPlain``."""
    if annotation is str and isinstance(value, str):
        return value
    if type(value) is annotation and annotation is not Path:  # a default, already converted
        return value
    if isinstance(value, str):
        if annotation is int and _INT.fullmatch(value) and len(value) <= 4000:
            return int(value)
        if annotation is float and _FLOAT.fullmatch(value):
            return float(value)
        if annotation is Path and value and "\0" not in value:
            return Path(value)
    if annotation is Path and isinstance(value, Path):
        return value
    raise _NotPlain


@dataclass(frozen=True)
class PlainParam(RuntimeParam or object):  # type: ignore[misc]
    """typer's per-parameter converter, for the plain types (see the module docstring)."""

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        is_list = get_origin(self.annotation) is list
        item_type = get_args(self.annotation)[0] if is_list else self.annotation
        try:
            if is_list:
                items = value if isinstance(value, list | tuple) else [value]
                converted: Any = [_plain(item_type, item) for item in items]
            else:
                converted = _plain(item_type, value)
        except _NotPlain:
            typer_own = build_runtime_param(param.type_descriptor)
            return typer_own._coerce_value(value, param=param, ctx=ctx)
        if item_type is not Path:
            return converted

        def checked(path: Path) -> Any:  # typer's own exists / readable / file_okay... checks
            return coerce_cli_path(path, self.parameter_info, path_type=Path, param=param, ctx=ctx)

        return [checked(path) for path in converted] if is_list else checked(converted)


def _is_plain(param: Any) -> bool:
    try:
        descriptor = param.type_descriptor
        annotation, info = descriptor.annotation, descriptor.parameter_info
        if get_origin(annotation) is list:
            (annotation,) = get_args(annotation) or (None,)
        if annotation not in _PLAIN or descriptor.is_file:
            return False
        return info.parser is None and info.min is None and info.max is None and not info.clamp
    except AttributeError:  # pragma: no cover - another typer: leave it its own conversion
        return False


def _use_plain(params: list[Any]) -> None:
    if _TyperParameter is None:  # pragma: no cover
        return
    for param in params:
        if (
            isinstance(param, _TyperParameter)
            and getattr(param, "_runtime_param", False) is None
            and _is_plain(param)
        ):
            descriptor = param.type_descriptor
            param._runtime_param = PlainParam(
                parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
            )


def use_plain_values(command: Any, ctx: Any) -> None:
    """Give every plain parameter of ``command`` and of its subcommands a ``PlainParam``; the
    ``--help`` option too (a ``bool`` whose unset value, ``None``, typer would otherwise
    convert with pydantic). ``ctx`` is the parent's context: subcommands inherit its help
    option names (PIXL sets none of its own)."""
    _use_plain(command.get_params(ctx))
    for subcommand in getattr(command, "commands", {}).values():
        use_plain_values(subcommand, ctx)


class PlainCoercionGroup(TyperGroup):
    """The ``pixl`` group: its own parameters and those of the command it is about to run
    get plain value conversion."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _use_plain(params)
        return params

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[Any, Any, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            use_plain_values(command, ctx)
        return name, command, rest
