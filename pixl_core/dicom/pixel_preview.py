"""A picture for the reviewer: the image with the text regions found and what will be masked.

``pixl pixels preview --project P FILE.dcm --png OUT.png`` draws every region the pixel check
found on the first frames' displayed image: red for a region that will be masked (or would refuse
the instance under ``pixel_text: refuse``), green for one kept as benign markers. The picture is
made inside the hospital from the identifiable file and is as identifiable as the file itself:
it is for the reviewer's screen, never for export.
"""

from __future__ import annotations

import cv2
import numpy as np

from pixl_core.dicom.pixels import Analysis
from pixl_core.dicom.text_regions import stretch_to_8bit, value_range

MASKED_COLOUR = (0, 0, 255)  # BGR red
KEPT_COLOUR = (0, 160, 0)  # BGR green
MAX_SIDE = 1600


def preview_png(analysis: Analysis, photometric: str, frame: int = 0) -> bytes:
    """PNG bytes of ``frame`` as displayed, with the regions outlined."""
    image = analysis.frames[frame]
    low, high = value_range(image)
    grey = stretch_to_8bit(image, low, high)
    if photometric.strip().upper() == "MONOCHROME1":
        grey = cv2.bitwise_not(grey)
    picture = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    thickness = max(2, max(image.shape) // 600)
    for region in analysis.regions:
        if region.frame != frame:
            continue
        box = region.box
        colour = MASKED_COLOUR if region.masked else KEPT_COLOUR
        cv2.rectangle(
            picture, (box.left, box.top), (box.right - 1, box.bottom - 1), colour, thickness
        )
    scale = MAX_SIDE / max(picture.shape[:2])
    if scale < 1:
        picture = cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(picture))
    if not ok:
        raise ValueError("could not encode the preview as PNG")
    return encoded.tobytes()
