"""A real RFB 3.8 client, just far enough to learn whether a VNC console lets it in.

VNC authentication (security type 2) encrypts the server's 16-byte challenge with
DES, keyed by the password's first 8 bytes with each byte's bits reversed
(HOST-NOTES.md), here with pycryptodome's DES.
"""

from __future__ import annotations

import socket
import struct

from Crypto.Cipher import DES

NONE, VNC_AUTH = 1, 2


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return bytes(data)


def _reason(sock: socket.socket) -> str:
    (length,) = struct.unpack("!I", _exactly(sock, 4))
    return _exactly(sock, min(length, 4096)).decode("latin-1")


def des_key(password: str) -> bytes:
    raw = (password.encode("latin-1") + b"\0" * 8)[:8]
    return bytes(int(f"{byte:08b}"[::-1], 2) for byte in raw)


def connect(port: int, password: str | None, host: str = "127.0.0.1",
            timeout: float = 10.0) -> str:
    """'ok' if the console lets this client in; else 'refused: why'.

    *password* None: ask for no authentication at all (security type None).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        version = _exactly(sock, 12)
        if not version.startswith(b"RFB "):
            raise ConnectionError(f"not an RFB server: {version!r}")
        sock.sendall(b"RFB 003.008\n")
        (count,) = _exactly(sock, 1)
        if count == 0:
            return f"refused: {_reason(sock)}"
        offered = set(_exactly(sock, count))
        if password is None:
            if NONE not in offered:
                return f"refused: no authentication is not offered (only {sorted(offered)})"
            sock.sendall(bytes([NONE]))
        else:
            if VNC_AUTH not in offered:
                return f"refused: VNC authentication is not offered ({sorted(offered)})"
            sock.sendall(bytes([VNC_AUTH]))
            challenge = _exactly(sock, 16)
            sock.sendall(DES.new(des_key(password), DES.MODE_ECB).encrypt(challenge))
        (result,) = struct.unpack("!I", _exactly(sock, 4))
        if result != 0:
            return f"refused: {_reason(sock)}"
        sock.sendall(b"\x01")  # ClientInit, shared
        width, height = struct.unpack("!HH", _exactly(sock, 4))
        return "ok" if width and height else "ok (no screen)"
