"""What a SPEC 10 action produced, made into the file the user reads (runs as the user).

Root hands over console.json's fields, a screenshot's bytes or a serial log's
tail (:data:`wirt_wrapper.rules.protocol.OUTPUT`); this module checks the
shape again and turns it into the bytes of ``info/vm/<vm>/<file>``, which
the user side writes with :func:`wirt_wrapper.user.fs.replace_file` (mode
0600).  A screenshot is decoded with Pillow here, never by root, refused
past :data:`~wirt_wrapper.rules.protocol.MAX_SCREEN_SIDE` pixels a side
(checked before the pixels are decoded), and written as a fresh PNG.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import TYPE_CHECKING, Any

from wirt_wrapper.rules.actions import CONSOLE_FILE, SCREEN_FILE, SERIAL_FILE
from wirt_wrapper.rules.protocol import MAX_SCREEN, MAX_SCREEN_SIDE, MAX_SERIAL, check_output

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["BadOutput", "render"]

FORMATS = ("PNG", "PPM")  # what libvirt's screenshot stream holds


def _pillow() -> ModuleType:
    """Pillow's Image, loaded by the user side that has a screen to write, after the drop.

    Not preloaded by the spawner (``privsep.Spawner``): its ``logging`` and
    ``threading`` would add at-fork work to every user side; the start-up
    check makes sure a user may read it (``startup.check_readable``).
    """
    from PIL import Image

    # Pillow's own bomb check, at wirt's size: a bigger image is refused, not decoded.
    Image.MAX_IMAGE_PIXELS = MAX_SCREEN_SIDE * MAX_SCREEN_SIDE
    Image.preinit()  # the PNG and PPM plugins (and others it knows), now
    return Image


class BadOutput(Exception):
    """What root handed over cannot be written (the message says why)."""


def _bytes(output: dict[str, Any], limit: int) -> bytes:
    try:
        data = base64.b64decode(output.get("b64", ""), validate=True)
    except (binascii.Error, ValueError):
        raise BadOutput("the data is not base64") from None
    if len(data) > limit:
        raise BadOutput(f"{len(data)} bytes, more than {limit}")
    return data


def screen_png(data: bytes) -> tuple[bytes, tuple[int, int]]:
    """*data* (PNG or PPM) checked and re-encoded as PNG; (png, (width, height))."""
    try:
        Image = _pillow()  # noqa: N806 - the module, under its usual name
    except ImportError as exc:  # an install the start-up check did not see broken
        raise BadOutput(f"Pillow cannot be loaded ({exc}); please tell the admin") from None
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if not (0 < width <= MAX_SCREEN_SIDE and 0 < height <= MAX_SCREEN_SIDE):
                raise BadOutput(f"the screen is {width}x{height} pixels, more than "
                                f"{MAX_SCREEN_SIDE}x{MAX_SCREEN_SIDE}")
            image.load()
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
    except BadOutput:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadOutput(f"the screen image cannot be decoded: {exc}") from None
    return out.getvalue(), (width, height)


def render(value: Any) -> tuple[str, bytes]:
    """(file name, content) of what root handed over; BadOutput if it is not right."""
    try:
        output = check_output(value)
    except Exception as exc:  # noqa: BLE001 - a ProtocolError from root: say so, write nothing
        raise BadOutput(str(exc)) from None
    name = output["file"]
    if name == CONSOLE_FILE and "console" in output:
        return name, (json.dumps(output["console"], indent=2, sort_keys=True) + "\n").encode()
    if name == SCREEN_FILE:
        return name, screen_png(_bytes(output, MAX_SCREEN))[0]
    if name == SERIAL_FILE:
        return name, _bytes(output, MAX_SERIAL)
    raise BadOutput(f"{name!r} is not a file wirt writes")
