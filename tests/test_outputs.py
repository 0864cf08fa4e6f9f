"""user/outputs.py and protocol.OUTPUT: what the user side makes of root's answer (SPEC 10)."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from wirt_wrapper.cli.main import without_host
from wirt_wrapper.cli.reach import check_host, png_size, terminal_text
from wirt_wrapper.rules.errors import UsageError
from wirt_wrapper.user.outputs import BadOutput, render


def image(fmt: str, size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(out, format=fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_png_is_checked_and_written_again() -> None:
    raw = image("PNG", (720, 400)) + b"JUNK after the image"
    name, data = render({"file": "screen.png", "b64": b64(raw), "mime": "image/png"})
    assert name == "screen.png" and png_size(data) == (720, 400)
    assert data != raw and b"JUNK" not in data  # encoded again, not passed through


def test_pillow_is_loaded_by_the_first_screen_whole() -> None:
    """Pillow is loaded on first use (a user side with a screen to write, after the drop:
    the spawner forks every other user side without it, see privsep.Spawner), then whole:
    its plugins come with it (Image.preinit), so a second screen loads no module, and
    wirt's bomb limit is set."""
    import subprocess
    import sys

    code = ("import sys, base64\n"
            "from wirt_wrapper.user import outputs\n"
            f"data = {image('PNG', (8, 8))!r}\n"
            "print('PIL' in sys.modules)\n"
            "shown = {'file': 'screen.png', 'b64': base64.b64encode(data).decode()}\n"
            "outputs.render(shown)\n"
            "before = set(sys.modules)\n"
            "outputs.render(shown)\n"
            "from PIL import Image\n"
            "print(sorted(set(sys.modules) - before), Image.MAX_IMAGE_PIXELS == 4096 ** 2)\n")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.split("\n")[:2] == ["False", "[] True"], proc.stdout


def test_a_ppm_becomes_a_png() -> None:
    name, data = render({"file": "screen.png", "b64": b64(image("PPM", (64, 48)))})
    assert data.startswith(b"\x89PNG") and png_size(data) == (64, 48)


@pytest.mark.parametrize("size", [(4097, 10), (10, 4097)])
def test_a_screen_over_4096_pixels_is_refused(size: tuple[int, int]) -> None:
    with pytest.raises(BadOutput, match="more than 4096x4096"):
        render({"file": "screen.png", "b64": b64(image("PNG", size))})


@pytest.mark.parametrize("data", [b"not an image", b"GIF89a" + b"\0" * 40,
                                  image("BMP", (8, 8))])
def test_what_is_not_png_or_ppm_is_refused(data: bytes) -> None:
    with pytest.raises(BadOutput, match="cannot be decoded"):
        render({"file": "screen.png", "b64": b64(data)})


def test_shapes_and_names_are_checked() -> None:
    for bad in ({"file": "status.xml", "b64": ""}, {"file": "serial.log", "b64": "***"},
                {"file": "serial.log", "b64": b64(b"x" * (64 * 1024 + 1))},
                {"file": "console.json", "console": {"type": "vnc"}},
                {"file": "console.json", "console": {
                    "type": "vnc", "host": "h", "port": 1, "password": "123456789",
                    "valid_until": "z"}},
                {"file": "serial.log", "b64": "", "extra": 1}, "serial.log"):
        with pytest.raises(BadOutput):
            render(bad)


def test_console_json_holds_the_five_fields() -> None:
    console = {"type": "vnc", "host": "127.0.0.1", "port": 5901, "password": "aB3dE6gH",
               "valid_until": "2026-12-01T12:15:00Z"}
    name, data = render({"file": "console.json", "console": console})
    assert name == "console.json" and json.loads(data) == console


def test_serial_bytes_pass_as_they_are() -> None:
    assert render({"file": "serial.log", "b64": b64(b"\x1b[2Jboot\n")}) == (
        "serial.log", b"\x1b[2Jboot\n")


def test_cli_helpers() -> None:
    assert terminal_text(b"ok\r\n\x1b[31mred\x07\n") == "ok\n\\x1b[31mred\\x07\n"
    # bidi overrides and line separators a guest prints are shown, not obeyed
    assert terminal_text("a\u202eb\u2028c\x7f".encode()) == "a\\u202eb\\u2028c\\x7f"
    assert without_host(["--host", "h", "list", "--host=x", "-o", "f"]) == ["list", "-o", "f"]
    assert check_host("alice@server.example") == "alice@server.example"
    for bad in ("-oProxyCommand=x", "a b", "h;id", "", "x/y"):
        with pytest.raises(UsageError):
            check_host(bad)
