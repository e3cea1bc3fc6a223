"""The ``pixl`` command: one entry point for everything a data engineer runs."""

from __future__ import annotations

import typer

from pixl_cli.allowlist_cmd import allowlist_app
from pixl_cli.anonymise_cmd import anonymise
from pixl_cli.control_cmds import hours, pause, resume
from pixl_cli.export_cmd import export_patient_data
from pixl_cli.pixels_cmd import pixels_app
from pixl_cli.reports_cmd import reports_app
from pixl_cli.verify_cmd import MANIFEST_HELP, VERIFY_HELP, verify, write_manifest
from pixl_cli.work_cmds import populate, rate, retry, status

app = typer.Typer(
    name="pixl",
    help="PIXL: export de-identified imaging and reports to a research Data Safe Haven.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


@app.callback()
def main() -> None:
    """PIXL: export de-identified imaging and reports to a research Data Safe Haven."""


app.command("anonymise")(anonymise)
app.add_typer(allowlist_app, name="allowlist")
app.command("populate")(populate)
app.command("status")(status)
app.command("rate")(rate)
app.command("pause")(pause)
app.command("resume")(resume)
app.command("hours")(hours)
app.command("export-patient-data")(export_patient_data)
app.command("retry")(retry)
app.command("verify", help=VERIFY_HELP)(verify)
app.command("manifest", help=MANIFEST_HELP)(write_manifest)
app.add_typer(reports_app, name="reports")
app.add_typer(pixels_app, name="pixels")


if __name__ == "__main__":
    app()
