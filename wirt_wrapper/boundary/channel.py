"""Framed messages across the boundary: the one wire format both sides use (no privilege).

A message is a :mod:`wirt_wrapper.rules.protocol` JSON object, sent as a
4-byte length and the bytes, over a Unix stream socket.  With a deadline,
every read and write honours it, so a stopped or hung peer cannot stall
root: it gets :class:`Timeout`.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from wirt_wrapper.rules import protocol
from wirt_wrapper.rules.errors import ProtocolError
from wirt_wrapper.rules.protocol import MAX_MESSAGE

__all__ = ["Channel", "Timeout"]

_HEADER = struct.Struct("!I")


class Timeout(Exception):
    """The other side did not answer before the deadline."""


class Channel:
    """JSON messages over a stream socket; with a deadline, every read and write honours it."""

    def __init__(self, sock: socket.socket, deadline: float | None = None) -> None:
        self.sock = sock
        self.deadline = deadline

    def _arm(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            self.sock.settimeout(left)

    def send(self, message: dict[str, Any]) -> None:
        data = protocol.encode(message)
        self._arm()
        try:
            self.sock.sendall(_HEADER.pack(len(data)) + data)
        except TimeoutError:
            raise Timeout() from None

    def _read(self, size: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < size:
            self._arm()
            try:
                chunk = self.sock.recv(size - len(chunks))
            except TimeoutError:
                raise Timeout() from None
            if not chunk:
                raise EOFError("the other side closed the channel")
            chunks += chunk
        return bytes(chunks)

    def recv(self) -> dict[str, Any]:
        (size,) = _HEADER.unpack(self._read(_HEADER.size))
        if size > MAX_MESSAGE:
            raise ProtocolError(f"message of {size} bytes is too large")
        return protocol.decode(self._read(size))

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.recv()
