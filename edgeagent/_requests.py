"""Requests from the agent to the gateway over the hub session: ``request``
frames answered by a ``response`` naming the request's id as its parent.

Several requests may be in flight at once (a download keeps a window of piece
requests open); each waits for its own response. A request made while no
session is up, or whose session ends before the answer comes, fails at once
with ``HubUnavailable``: the caller decides when to try again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from edgeproto import Kind, Message

from ._errors import AgentError

__all__ = ["HubUnavailable", "RequestError", "Requests"]


class HubUnavailable(AgentError):
    """No session with the gateway, it ended before the answer, or no answer
    came in time: worth trying again later."""


class RequestError(AgentError):
    """The gateway answered a request with an error (``code``: 400, 403, 404,
    503… as the gateway's request handlers give them)."""

    def __init__(self, code: int | str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Waiter:
    __slots__ = ("body", "done", "failed")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.body: Mapping[str, Any] | None = None
        self.failed: str | None = None


Send = Callable[[Message], Awaitable[None]]
# What sending on a session that ended raises (the session's own loop sees it too).
_SEND_ENDED: tuple[type[BaseException], ...] = (trio.BrokenResourceError, trio.ClosedResourceError)


class Requests:
    """The requests of the current session, by id. ``open`` and ``close`` are
    called by the hub client as sessions begin (after their resync) and end;
    ``deliver`` with each ``response`` frame."""

    def __init__(self, next_id: Callable[[], int], send_errors: tuple[type[BaseException], ...]):
        self._next_id = next_id
        self._send: Send | None = None
        self._waiting: dict[int, _Waiter] = {}
        self._send_errors = _SEND_ENDED + send_errors
        self.unanswered = 0  # responses that came after their request gave up (counted)

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    @property
    def is_open(self) -> bool:
        return self._send is not None

    def open(self, send: Send) -> None:
        self._send = send

    def close(self, why: str) -> None:
        """The session ended: every request waiting fails with ``why``."""
        self._send = None
        waiting, self._waiting = self._waiting, {}
        for w in waiting.values():
            w.failed = why
            w.done.set()

    def deliver(self, parent: int, body: Mapping[str, Any]) -> bool:
        """A response; False when no request waits for it (it gave up)."""
        w = self._waiting.pop(parent, None)
        if w is None:
            self.unanswered += 1
            return False
        w.body = body
        w.done.set()
        return True

    async def request(
        self,
        op: str,
        res: str,
        body: Mapping[str, Any] | None = None,
        *,
        timeout: float,  # noqa: ASYNC109  # ends as HubUnavailable, the request forgotten
    ) -> dict[str, Any]:
        """Send ``request{op, res, body}`` and return the response's body.
        ``HubUnavailable`` when no session is up, the session ends first or
        ``timeout`` seconds pass; ``RequestError`` when the body is an error."""
        send = self._send
        if send is None:
            raise HubUnavailable("not connected to the gateway")
        rid = self._next_id()
        w = _Waiter()
        waiting = self._waiting  # this session's; a new session has a new one
        waiting[rid] = w
        try:
            with trio.move_on_after(timeout) as scope:
                try:
                    await send(Message(Kind.REQUEST, id=rid, res=res, op=op, body=body or {}))
                except self._send_errors as exc:
                    raise HubUnavailable(f"the session with the gateway ended: {exc}") from None
                await w.done.wait()
        finally:
            waiting.pop(rid, None)
        if scope.cancelled_caught:
            raise HubUnavailable(f"no response to {op} {res} within {timeout:g} s")
        if w.failed is not None:
            raise HubUnavailable(w.failed)
        answer = dict(w.body or {})
        err = answer.get("error")
        if err is not None:
            if isinstance(err, Mapping):
                code = err.get("code")
                raise RequestError(
                    code if isinstance(code, int | str) else "?", str(err.get("message", ""))
                )
            raise RequestError("?", str(err))
        return answer
