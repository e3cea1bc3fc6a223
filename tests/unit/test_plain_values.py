"""``pixl_cli.plain_values``: arguments converted without pydantic give what typer gives.

The same command is run under typer's own group and under ``PlainCoercionGroup``; for every
spelling, accepted or not, the output and the exit code must be the same (a bad value fails
with typer's own message, because the plain converter hands it to typer's).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from pixl_cli.plain_values import PlainCoercionGroup

runner = CliRunner()


def make_app(group: type[TyperGroup]) -> typer.Typer:
    app = typer.Typer(cls=group, add_completion=False)

    @app.command()
    def show(
        paths: list[Path] = typer.Argument(None),
        number: int = typer.Option(0, "--number"),
        maybe: int | None = typer.Option(None, "--maybe"),
        ratio: float = typer.Option(0.0, "--ratio"),
        name: str = typer.Option("", "--name"),
        folder: Path = typer.Option(Path("."), "--folder"),
        flag: bool = typer.Option(False, "--flag"),
        names: list[str] = typer.Option([], "--names"),
        existing: Path | None = typer.Option(None, "--existing", exists=True),
    ) -> None:
        values = (paths, number, maybe, ratio, name, folder, flag, names, existing)
        print(repr(values))

    @app.command()
    def other() -> None:
        """A second command, so that the app is a group as ``pixl`` is."""

    return app


TYPER, PLAIN = make_app(TyperGroup), make_app(PlainCoercionGroup)
SPELLINGS = {
    "--number": ["1", "007", "+5", "-0", " 3", "3 ", "1_000", "1.0", "1e3", "x", "", "٣", "9" * 30],
    "--maybe": ["2", "-7", "two"],
    "--ratio": ["1", "1.5", "-.5", "1e3", "1E-3", "nan", "inf", " 2", "1_0", "x", "", "1.", "."],
    "--name": ["", "a", "é ü", "--"],
    "--folder": ["a", "", ".", "/tmp", "a\0b", "~"],
    "--names": ["a"],
    "--existing": ["/tmp", "/nonexistent/x"],
}


@pytest.mark.parametrize(
    "argv",
    [["show", option, value] for option, values in SPELLINGS.items() for value in values]
    + [
        ["show"],
        ["show", "--flag"],
        ["show", "a", "b/c", "/d"],
        ["show", "--names", "a", "--names", "b"],
        ["show", "--help"],
        ["--help"],
        ["show", "--number"],
        ["nothing"],
    ],
)
def test_plain_conversion_gives_what_typer_gives(argv: list[str]) -> None:
    typer_result = runner.invoke(TYPER, argv, env={"COLUMNS": "200"})
    plain_result = runner.invoke(PLAIN, argv, env={"COLUMNS": "200"})
    assert plain_result.output == typer_result.output
    assert plain_result.exit_code == typer_result.exit_code


def test_every_parameter_of_the_command_run_gets_the_plain_converter() -> None:
    """Else the comparison above would pass by both sides running typer's converter."""
    from pixl_cli.plain_values import PlainParam

    group = typer.main.get_command(PLAIN)
    with group.make_context("app", ["show"]) as ctx:
        _, show, _ = group.resolve_command(ctx, ["show"])
        params = show.get_params(ctx)
    assert {p.name for p in params} >= {"number", "folder", "existing", "help"}
    assert all(isinstance(p._runtime_param, PlainParam) for p in params), params
