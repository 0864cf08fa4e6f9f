"""Framed messages across the boundary: the one wire format both sides use (no privilege).

A message is a :mod:`wirt_wrapper.rules.protocol` JSON object, sent as a
4-byte length and the bytes, over a Unix stream socket.  With a deadline,
every read and write honours it, so a stopped or hung peer cannot stall
root: it gets :class:`Timeout`.
"""

from __future__ import annotations

import os
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

    def send_fds(self, message: dict[str, Any], fds: list[int]) -> None:
        """One message with descriptors attached (SCM_RIGHTS, on its first byte)."""
        body = protocol.encode(message)
        data = _HEADER.pack(len(body)) + body
        self._arm()
        try:
            sent = socket.send_fds(self.sock, [data], fds)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        except TimeoutError:
            raise Timeout() from None

    def recv_fds(self, max_fds: int) -> tuple[dict[str, Any], list[int]]:
        """One message and the descriptors that came with it (the caller owns them).

        More than *max_fds* descriptors, a truncated control message, or a bad
        message: every descriptor received is closed, then ProtocolError (or EOFError).
        """
        self._arm()
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, 4096, max_fds)
        except TimeoutError:
            raise Timeout() from None
        try:
            if flags & socket.MSG_CTRUNC:
                raise ProtocolError("too many descriptors in one message")
            if not data:
                raise EOFError("the other side closed the channel")
            if len(data) < _HEADER.size:
                data += self._read(_HEADER.size - len(data))
            (size,) = _HEADER.unpack(data[:_HEADER.size])
            if size > MAX_MESSAGE:
                raise ProtocolError(f"message of {size} bytes is too large")
            body = data[_HEADER.size:]
            if len(body) > size:
                raise ProtocolError("more than one message came with descriptors")
            body += self._read(size - len(body))
            return protocol.decode(body), fds
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        return self.recv()
