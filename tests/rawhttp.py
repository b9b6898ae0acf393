"""A raw HTTP/1.1 server on 127.0.0.1 for answers no well-behaved server would send.

Tests subclass ``RawServer`` and write each answer byte by byte in ``answer``: endless bodies,
trickled headers, gzip bombs. Each connection runs in a thread of its own.
"""

from __future__ import annotations

import socket
import threading


def read_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """Read one request's head and its whole body (closing on unread bytes resets the peer)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            break
        body += piece
    return head, body


class RawServer:
    """Accepts connections on a free port of 127.0.0.1 and answers each through ``answer``."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def answer(self, conn: socket.socket, head: bytes) -> None:
        """Write the answer to one request; an ``OSError`` (the client hung up) ends it."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting connections."""
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                head, _ = read_request(conn)
                self.answer(conn, head)
            except OSError:
                return  # the client hung up, as it may
