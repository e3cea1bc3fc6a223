"""``pixl pixels preview``: show a reviewer what the burned-in text check finds in one file.

The PNG shows the image as displayed with every text region outlined: red for what will be masked
(or refuse the instance under ``pixel_text: refuse``), green for what stays as benign markers.
It is made from an identifiable file and is as identifiable as that file: keep it inside.
The command prints the number of regions by kind (never the text read).
"""

from __future__ import annotations

from pathlib import Path

import typer

from pixl_cli.output import EXIT_DATA_ERROR, EXIT_OK, console, err_console, operator_errors
from pixl_core.config.pixel_policy import PixelText
from pixl_core.config.projects import load_project
from pixl_core.errors import PixlConfigError

pixels_app = typer.Typer(no_args_is_help=True, help="Burned-in text in the pixels.")


@pixels_app.command("preview")
def preview(
    file: Path = typer.Argument(..., help="One DICOM file."),
    project: str = typer.Option(
        ..., "--project", "-p", help="Project slug (projects/<slug>.yaml)."
    ),
    png: Path = typer.Option(..., "--png", help="Where to write the picture (PNG)."),
) -> None:
    """Draw the text regions found in FILE and whether each is masked (red) or kept (green).

    Exit 0 when the picture was written, 1 when the file cannot be read or decoded, 2 for bad
    usage or configuration.
    """
    from pixl_core.dicom.header import UnreadableDicom, parse_header
    from pixl_core.dicom.pixel_data import PixelsRefused
    from pixl_core.dicom.pixel_preview import preview_png
    from pixl_core.dicom.pixels import analyse

    with operator_errors():
        config = load_project(project)
        if png.suffix.lower() != ".png":
            raise PixlConfigError(f"--png must name a .png file, e.g. {png.with_suffix('.png')}")
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise PixlConfigError(
                f"cannot read {file} ({exc.strerror}): give a DICOM file"
            ) from None
    try:
        parsed = parse_header(data)
        source = parsed.dataset
        element = parsed.pixel_element
        if not element and "PixelData" in source:
            value = bytes(source.PixelData)
            element = b"\xe0\x7f\x10\x00OB\0\0" + len(value).to_bytes(4, "little") + value
        with operator_errors():
            analysis = analyse(source, element, source.file_meta.TransferSyntaxUID, config)
    except UnreadableDicom:
        err_console.print("[red]error:[/red] not a DICOM file PIXL can read", highlight=False)
        raise typer.Exit(EXIT_DATA_ERROR) from None
    except PixelsRefused as refusal:
        err_console.print(
            f"[red]error:[/red] the pixels cannot be checked ({refusal.reason}); such an "
            "instance is refused",
            highlight=False,
        )
        raise typer.Exit(EXIT_DATA_ERROR) from None
    png.write_bytes(preview_png(analysis, str(source.get("PhotometricInterpretation", ""))))
    masked = sum(r.masked for r in analysis.regions)
    kept = len(analysis.regions) - masked
    action = {
        PixelText.MASK: "to mask",
        PixelText.REFUSE: "refusing the instance",
        PixelText.OFF: "not checked on export (pixel_text: off)",
    }[config.pixel_text]
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(analysis.counts.items())) or "none"
    console.print(
        f"{len(analysis.regions)} text regions: {masked} {action}, {kept} benign kept "
        f"(by kind: {kinds}); picture written to {png}",
        highlight=False,
    )
    raise typer.Exit(EXIT_OK)
