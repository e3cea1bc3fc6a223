"""Arguments no ``pixl`` command may take: each is one line and exit 2, before anything runs.

The database URL points at nothing, so a command that got past its argument checks would fail
with a different message (or a traceback): each test proves the check comes first.
"""

from __future__ import annotations

import secrets

import pytest
from typer.testing import CliRunner

from pixl_cli.main import app

runner = CliRunner()
NOWHERE = {
    "PIXL_DB_URL": "postgresql://nobody@127.0.0.1:1/none",
    "PIXL_EHR_URL": "",
    "PIXL_HASH_KEY": secrets.token_hex(16),  # drawn per run: no key in the repository
}
LONG = "a" * 100_000


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["rate", "nan"], "the rate must be a number of studies per second above 0"),
        (["rate", "inf"], "the rate must be a number of studies per second above 0"),
        (["rate", "--", "-1"], "the rate must be a number of studies per second above 0"),
        # `pixl rate 0` pauses (tests/integration/test_operator_cli.py); with --in-flight it
        # is refused, never a silent no-op.
        (["rate", "0", "--in-flight", "2"], "to stop asking: `pixl pause` or `pixl rate 0`"),
        (["rate", "1000"], "and at most 100"),
        (["rate", "1", "--in-flight", "0"], "--in-flight must be a whole number from 1 to 100"),
        (["rate", "--in-flight", "99999999999"], "--in-flight must be a whole number from 1"),
        (["rate", "1", "--project", LONG], "that is not a project slug"),
        (["status", "--project", LONG], "--project must be a project slug"),
        (["retry", LONG], "that is not a project slug"),
        (["reports", "flagged", "Chest/../x"], "that is not a project slug"),
        (["reports", "approve", "9" * 30], "ID must be a report id"),
        (["reports", "show", "0"], "ID must be a report id"),
        (["export-patient-data", LONG], "PROJECT must be a project slug"),
        (["export-patient-data", "chest-xray", "--extract-id", "9" * 30], "--extract-id must be"),
        (["populate", LONG], "SOURCE cannot be read (File name too long)"),
        (["populate", "x.csv", "--project", LONG], "--project must be a project slug"),
        (["populate", ".", "--project", LONG], "--project must be a project slug"),
        (["anonymise", "--project", "chest-xray", "--output", "o", LONG], "an input cannot be"),
        (["allowlist", "check", LONG], "a target cannot be read"),
    ],
)
def test_bad_argument_is_one_line_and_exit_2(args: list[str], expected: str, tmp_path):
    if args[:2] == ["populate", "x.csv"]:
        (tmp_path / "x.csv").write_text("mrn,accession_number,study_datetime\n")
        args = ["populate", str(tmp_path / "x.csv"), *args[2:]]
    result = runner.invoke(app, args, env={**NOWHERE, "COLUMNS": "400"})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert expected in lines[0]
    assert LONG not in result.output and "9" * 30 not in result.output
