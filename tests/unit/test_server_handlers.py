"""The server's `handlers()` hook: a stage adds events by overriding it, and only what
it returns is registered (everything else answers `unsupported`)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from imlab import protocol as p
from imlab.server import Handler, Login, StageServer, current_sid


class Extended(StageServer):
    stage = "test"

    def handlers(self) -> dict[str, Handler]:
        return {**super().handlers(), p.REFRESH: self._refresh}

    async def _refresh(self, user: str, data: Any) -> dict[str, Any]:
        p.parse_empty(data)
        if user == "slow":
            raise p.RateLimited(1.5)
        return p.ok_ack(token="t", expires_at=1.0)


def registered(server: StageServer) -> set[str]:
    return set(server.sio.handlers["/"]) - {"connect", "disconnect", "*"}


async def test_the_base_server_registers_the_five_base_events() -> None:
    assert registered(StageServer("n1")) == set(p.CLIENT_EVENTS)


async def test_a_stage_adds_events_that_run_guarded() -> None:
    server = Extended("n1")
    assert registered(server) == {*p.CLIENT_EVENTS, p.REFRESH}
    run = server.sio.handlers["/"][p.REFRESH]
    assert (await run("sid1", {}))["error"]["code"] == "unauthorized"  # not logged in
    server.sessions["sid1"] = "alice"
    assert await run("sid1", {}) == {"ok": True, "token": "t", "expires_at": 1.0}
    assert (await run("sid1", [1]))["error"]["code"] == "bad_request"
    server.sessions["sid2"] = "slow"
    error = (await run("sid2", None))["error"]
    assert (error["code"], error["retry_after"]) == ("rate_limited", 1.5)


class Renewing(StageServer):
    stage = "test"

    def handlers(self) -> dict[str, Handler]:
        return {**super().handlers(), p.REFRESH: self._refresh}

    async def _refresh(self, user: str, data: Any) -> dict[str, Any]:
        sid = current_sid.get()
        assert sid is not None
        self.renew_login(sid, Login(user, time.time() + 300, "jti-2"))
        return p.ok_ack()


async def test_a_handler_knows_its_session_and_can_renew_its_login() -> None:
    server = Renewing("n1")
    await server._connect("sid1", {}, {"user": "alice"})
    assert server.logins["sid1"] == Login("alice")
    server._expire_at("sid1", time.time() + 5)
    assert (await server.sio.handlers["/"][p.REFRESH]("sid1", {}))["ok"]
    assert current_sid.get() is None
    assert server.logins["sid1"].token_id == "jti-2"
    assert server.expiry["sid1"][0] > time.time() + 200
    with pytest.raises(ValueError):
        server.renew_login("sid1", Login("mallory", None))
    await server._disconnect("sid1")
    assert not server.logins and not server.expiry
