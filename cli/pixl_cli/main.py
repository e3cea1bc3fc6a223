"""The ``pixl`` command: one entry point for everything a data engineer runs.

**Rule for command modules: heavy libraries are imported inside the functions that use them.**
Every ``pixl`` invocation imports this module and, through it, every command module, so what a
command module imports at module level every command pays for, ``pixl --help`` included. At
module level import only the standard library, typer and rich, ``pixl_cli.output``,
``pixl_cli.database`` and the light parts of ``pixl_core`` (``errors``, ``config.projects``,
``hashing``, ``env``). Import pydicom and the engine (``pixl_core.dicom``), numpy, OpenCV,
pandas, pyarrow, psycopg2 (``pixl_core.db``), requests, ``pixl_core.text`` and ``pixl_ehr``
inside the command (or helper) that needs them; a name used only in annotations goes under
``if TYPE_CHECKING:``. ``tests/unit/test_cli_startup.py`` enforces it and names the import
chain of an offender. Measured when this was introduced (issue 12, min of 11 runs, CPU time):
``pixl --help`` went from 1.00 to 0.20 CPU-s and ``pixl status`` from 1.07 to 0.31, against
0.34 for ``python -c "import pydicom"`` (``benchmarks/cli_bench.py``).

**Parameters are ``str``, ``int``, ``float``, ``bool``, ``Path`` or a list of one of them,** with
no typer ``min``/``max``/``parser``: the group converts those without pydantic
(``pixl_cli/plain_values.py``), which typer 0.29 would otherwise import (~50 ms) for every
command run. Another type works, and costs its command that import.
"""

from __future__ import annotations

import os

import typer

from pixl_cli.allowlist_cmd import allowlist_app
from pixl_cli.anonymise_cmd import anonymise
from pixl_cli.control_cmds import hours, pause, resume
from pixl_cli.export_cmd import export_patient_data
from pixl_cli.pixels_cmd import pixels_app
from pixl_cli.plain_values import PlainCoercionGroup
from pixl_cli.reports_cmd import reports_app
from pixl_cli.verify_cmd import MANIFEST_HELP, VERIFY_HELP, verify, write_manifest
from pixl_cli.work_cmds import populate, rate, retry, status

# Before any command imports numpy (through pydicom): its OpenBLAS starts a thread per core that
# spins for a while at import, ~10-40 ms CPU per process here, and no command uses BLAS (its
# parallelism is `pixl anonymise --jobs`). An operator's explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

app = typer.Typer(
    name="pixl",
    help="PIXL: export de-identified imaging and reports to a research Data Safe Haven.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    cls=PlainCoercionGroup,  # no pydantic to convert arguments: see pixl_cli/plain_values.py
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
