"""Stage v1 (seed section 二): one process, 1:1 chat only.

Login binds `user -> connection` in memory. A message is pushed to the recipient
and echoed to the sender; nothing is stored, so a recipient who is offline gets
nothing and the sender is told `recipient_offline`.
"""

from __future__ import annotations

from typing import Any

from imlab import protocol as p
from imlab.protocol import ErrorCode, ProtocolError
from imlab.server import StageServer, base_parser, serve
from imlab.store import new_message


class Server(StageServer):
    stage = "v1"
    features = frozenset({p.FEATURE_DM})

    async def send(self, user: str, req: p.SendRequest) -> dict[str, Any]:
        assert req.to is not None  # groups were refused before we got here
        if not self.online(req.to):
            raise ProtocolError(ErrorCode.RECIPIENT_OFFLINE, f"{req.to} is not connected")
        msg = new_message(req.conv_for(user), user, req.client_msg_id, req.body, req.sent_at)
        await self.push([req.to, user], p.MESSAGE, msg.to_dict())
        return p.ok_ack(conv=msg.conv, msg_id=msg.msg_id, seq=None, server_ts=msg.server_ts)


def main(argv: list[str] | None = None) -> None:
    args = base_parser("imlab stage v1 server: 1:1 chat, connections in memory").parse_args(argv)
    server = Server(args.node or f"v1-{args.port}")
    serve(server, args.host, args.port, args.log_level)


if __name__ == "__main__":
    main()
