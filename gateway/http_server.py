"""The HTTP/1.1 connection protocol: uvicorn's httptools protocol, with bounds on what a client may take
before its request is whole.

uvicorn bounds an idle keep-alive connection (`timeout_keep_alive`) and nothing else on this path: a
connection that sends nothing, or a header byte now and then, stays open for ever, and headers have no
size limit (one endless header grew the process by 270 MB for 196 MB sent, measured here; h11 has a size
limit but is slower, and no deadline either). And a body that no route reads (a 401, a probe) may trickle
in after its answer for as long as the client likes, each byte cancelling the keep-alive timer. So:

* the head (request line and headers) must be whole within `header_timeout_s` of the connection's opening
  or of the request's first byte, else the connection is closed: there is no request yet to answer;
* the head may be about `max_header_bytes` long (counted per read, so up to one read more), else 431
  WG4008 and close;
* a body still arriving when its answer has gone must end within `body_timeout_s`, else close. A body a
  route reads has its own deadline (gateway/request_body.py).
"""

from __future__ import annotations

import asyncio
import functools

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.config import Settings
from gateway.errors import HEADERS_TOO_LARGE

REFUSED_LINGER_S = 2.0


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: object, header_timeout_s: float, max_header_bytes: int, body_timeout_s: float,
                 **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.body_timeout_s = body_timeout_s
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_head = False
        self._head_bytes = 0
        self._head_began_in_this_read = False
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_head()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._clear_deadline()
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # the rest of a refused head: dropped until the connection closes
            return
        self._head_began_in_this_read = False
        super().data_received(data)
        # A read in which a head began also holds what came before it (the end of a pipelined
        # request): it is not counted, which makes the bound one read looser, never too tight.
        if self._reading_head and not self._head_began_in_this_read and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.cycle is not None and self.cycle.more_body and not self.transport.is_closing():
            self._set_deadline(self.body_timeout_s)  # the rest of a body nobody reads: bounded

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_deadline()
        super().connection_lost(exc)

    def _start_head(self) -> None:
        self._reading_head = True
        self._head_bytes = 0
        self._head_began_in_this_read = True
        self._set_deadline(self.header_timeout_s)

    def _set_deadline(self, seconds: float) -> None:
        self._clear_deadline()
        self._deadline = self.loop.call_later(seconds, self._close)

    def _clear_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _close(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse_head(self) -> None:
        self._reading_head = False
        self._refused = True
        body = HEADERS_TOO_LARGE.body("", f"The request line and headers exceed {self.max_header_bytes} bytes.")
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%b" % (len(body), body))
        # Closing now, with the client's bytes unread, would reset the connection, and the client could
        # lose the answer: end our side, drop what still comes for a moment, then close.
        self.transport.write_eof()
        self._set_deadline(REFUSED_LINGER_S)


def bounded_protocol(settings: Settings) -> functools.partial[BoundedHttpToolsProtocol]:
    """What uvicorn's `http` option takes to build each connection's protocol (a partial of a module-level
    class pickles, so worker processes get it too)."""
    return functools.partial(BoundedHttpToolsProtocol, header_timeout_s=settings.header_timeout_s,
                             max_header_bytes=settings.max_header_bytes, body_timeout_s=settings.body_timeout_s)
