"""PostgreSQL as the system of record (stage v5): messages, sequence numbers, groups
with their membership over time, the outbox of messages not yet in Kafka, what each
recipient has acknowledged, and revoked tokens.

A sequence number is taken from a row of `convs` inside the transaction that stores the
message, so it is never handed out twice: a Redis failover cannot roll it back (the
OpenIM 3249 case). The same transaction writes the message's outbox row, so "stored"
and "will be published" are one commit (the seed's step order, made atomic).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from imlab.protocol import Message, group_conv

# Errors that mean "the database is not there right now": a request gets `unavailable`.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    OSError,
    TimeoutError,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS convs (
    conv text PRIMARY KEY,
    last_seq bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS messages (
    conv text NOT NULL,
    seq bigint NOT NULL,
    msg_id text NOT NULL,
    sender text NOT NULL,
    client_msg_id text NOT NULL,
    body text NOT NULL,
    sent_at double precision NOT NULL,
    server_ts double precision NOT NULL,
    PRIMARY KEY (conv, seq),
    UNIQUE (conv, sender, client_msg_id)
);
CREATE TABLE IF NOT EXISTS user_convs (
    user_id text NOT NULL,
    conv text NOT NULL,
    PRIMARY KEY (user_id, conv)
);
CREATE TABLE IF NOT EXISTS groups (
    gid text PRIMARY KEY,
    name text NOT NULL,
    creator text NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS groups_by_creator ON groups (creator);
CREATE TABLE IF NOT EXISTS members (
    gid text NOT NULL,
    user_id text NOT NULL,
    joined_seq bigint NOT NULL,
    left_seq bigint,
    PRIMARY KEY (gid, user_id)
);
CREATE SEQUENCE IF NOT EXISTS group_ids;
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    key text NOT NULL,
    payload bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_until timestamptz NOT NULL DEFAULT '-infinity'
);
CREATE TABLE IF NOT EXISTS receipts (
    user_id text NOT NULL,
    conv text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (user_id, conv)
);
-- One round trip per send: dedup, the next seq (the conversation's row lock orders
-- concurrent senders), the message, the users' conversation index, the outbox row.
CREATE OR REPLACE FUNCTION imlab_append(
    p_conv text, p_msg_id text, p_sender text, p_cmid text, p_body text,
    p_sent_at double precision, p_server_ts double precision, p_index text[],
    p_topic text, p_key text
) RETURNS TABLE (
    o_seq bigint, o_msg_id text, o_body text, o_sent_at double precision,
    o_server_ts double precision, o_duplicate boolean, o_outbox_id bigint
) LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
    ob bigint;
BEGIN
    RETURN QUERY SELECT m.seq, m.msg_id, m.body, m.sent_at, m.server_ts, true, NULL::bigint
        FROM messages m
        WHERE m.conv = p_conv AND m.sender = p_sender AND m.client_msg_id = p_cmid;
    IF FOUND THEN
        RETURN;
    END IF;
    INSERT INTO convs AS c (conv, last_seq) VALUES (p_conv, 1)
        ON CONFLICT (conv) DO UPDATE SET last_seq = c.last_seq + 1
        RETURNING c.last_seq INTO s;
    INSERT INTO messages (conv, seq, msg_id, sender, client_msg_id, body, sent_at, server_ts)
        VALUES (p_conv, s, p_msg_id, p_sender, p_cmid, p_body, p_sent_at, p_server_ts);
    INSERT INTO user_convs (user_id, conv) SELECT u, p_conv FROM unnest(p_index) AS u
        ON CONFLICT DO NOTHING;
    IF p_topic IS NOT NULL THEN
        INSERT INTO outbox (topic, key, payload) VALUES (p_topic, p_key, convert_to(
            json_build_object(
                'conv', p_conv, 'msg_id', p_msg_id, 'seq', s, 'sender', p_sender,
                'body', p_body, 'sent_at', p_sent_at, 'server_ts', p_server_ts,
                'client_msg_id', p_cmid)::text, 'UTF8'))
            RETURNING id INTO ob;
    END IF;
    RETURN QUERY SELECT s, p_msg_id, p_body, p_sent_at, p_server_ts, false, ob;
END
$$;
CREATE TABLE IF NOT EXISTS revocations (
    id bigserial PRIMARY KEY,
    token_id text,
    user_id text,
    issued_before double precision,
    at double precision NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Membership:
    """One user's place in a group: sees messages with joined_seq < seq <= left_seq."""

    user: str
    joined_seq: int
    left_seq: int | None

    @property
    def active(self) -> bool:
        return self.left_seq is None

    def sees(self, seq: int) -> bool:
        return seq > self.joined_seq and (self.left_seq is None or seq <= self.left_seq)


@dataclass(frozen=True, slots=True)
class Revocation:
    id: int
    token_id: str | None
    user: str | None
    issued_before: float | None


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    topic: str
    key: str
    payload: bytes


def _message(row: asyncpg.Record) -> Message:
    return Message(
        conv=row["conv"],
        msg_id=row["msg_id"],
        seq=row["seq"],
        sender=row["sender"],
        body=row["body"],
        sent_at=row["sent_at"],
        server_ts=row["server_ts"],
        client_msg_id=row["client_msg_id"],
    )


_MESSAGE_COLUMNS = "conv, seq, msg_id, sender, client_msg_id, body, sent_at, server_ts"


class SqlStore:
    """Async access to the system of record; the methods v2-v4's MessageStore has keep
    their meaning, the rest is v5's (membership over time, outbox, receipts, revocations)."""

    def __init__(self, url: str, *, max_size: int = 10, command_timeout: float = 5.0) -> None:
        self.url = url
        self.max_size = max_size
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=self.max_size,
            command_timeout=self.command_timeout,
            timeout=self.command_timeout,
        )
        async with self.pool.acquire() as con, con.transaction():
            # Several processes start together: one creates the schema, the others wait.
            await con.execute("SELECT pg_advisory_xact_lock(5005)")
            await con.execute(SCHEMA)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise ConnectionError("the database pool is not open")
        return self._pool

    # ------------------------------------------------------------ messages

    async def append(
        self,
        msg: Message,
        index_for: Iterable[str] = (),
        *,
        outbox: tuple[str, str] | None = None,
    ) -> tuple[Message, bool, int | None]:
        """Store `msg` with the next seq of its conversation, and (with `outbox` =
        (topic, key)) its outbox row, in one transaction.

        Returns the stored message, whether it was a duplicate (same sender and
        client_msg_id: the original is returned, nothing written) and the outbox id.
        """
        for _ in range(3):
            try:
                return await self._append_once(msg, index_for, outbox)
            except asyncpg.UniqueViolationError:
                continue  # the same client_msg_id raced in: the re-read finds the original
        raise RuntimeError(f"could not store {msg.msg_id} in {msg.conv}")

    async def _append_once(
        self, msg: Message, index_for: Iterable[str], outbox: tuple[str, str] | None
    ) -> tuple[Message, bool, int | None]:
        topic, key = outbox if outbox is not None else (None, None)
        row = await self.pool.fetchrow(
            "SELECT * FROM imlab_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            msg.conv,
            msg.msg_id,
            msg.sender,
            msg.client_msg_id,
            msg.body,
            msg.sent_at,
            msg.server_ts,
            list(index_for),
            topic,
            key,
        )
        stored = Message(
            conv=msg.conv,
            msg_id=row["o_msg_id"],
            seq=row["o_seq"],
            sender=msg.sender,
            body=row["o_body"],
            sent_at=row["o_sent_at"],
            server_ts=row["o_server_ts"],
            client_msg_id=msg.client_msg_id,
        )
        return stored, bool(row["o_duplicate"]), row["o_outbox_id"]

    async def latest_seq(self, conv: str) -> int:
        value = await self.pool.fetchval("SELECT last_seq FROM convs WHERE conv = $1", conv)
        return int(value or 0)

    async def latest(self, user: str) -> dict[str, int]:
        """Every conversation of `user` with the last seq `user` may see in it."""
        return {conv: hi for conv, (_, hi) in (await self.visible(user)).items()}

    async def visible(self, user: str) -> dict[str, tuple[int, int]]:
        """Every conversation of `user` with the seqs `user` may see in it: lo < seq <= hi
        (a group member sees from joining to leaving)."""
        rows = await self.pool.fetch(
            "SELECT uc.conv, c.last_seq, m.joined_seq, m.left_seq"
            " FROM user_convs uc JOIN convs c ON c.conv = uc.conv"
            " LEFT JOIN members m ON uc.conv = 'group:' || m.gid AND m.user_id = uc.user_id"
            " WHERE uc.user_id = $1 ORDER BY uc.conv",
            user,
        )
        out: dict[str, tuple[int, int]] = {}
        for r in rows:
            last = int(r["last_seq"])
            if r["left_seq"] is not None:
                last = min(last, int(r["left_seq"]))
            out[r["conv"]] = (int(r["joined_seq"] or 0), last)
        return out

    async def sync(
        self, conv: str, after_seq: int, limit: int, *, upto: int | None = None
    ) -> tuple[list[Message], int, bool]:
        """Messages with after_seq < seq (<= upto), at most `limit`; the latest seq the
        reader may see, and whether more follow."""
        latest = await self.latest_seq(conv)
        if upto is not None:
            latest = min(latest, upto)
        rows = await self.pool.fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages"
            " WHERE conv = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
            conv,
            after_seq,
            latest,
            limit + 1,
        )
        return [_message(r) for r in rows[:limit]], latest, len(rows) > limit

    async def messages_after(
        self, cursors: dict[str, int], upto: dict[str, int], limit: int
    ) -> list[Message]:
        """For each conv in `upto`, the messages after `cursors[conv]` up to `upto[conv]`,
        oldest first per conversation, `limit` in all."""
        convs = [c for c, last in upto.items() if last > cursors.get(c, 0)]
        if not convs:
            return []
        rows = await self.pool.fetch(
            "SELECT m.conv, m.seq, m.msg_id, m.sender, m.client_msg_id, m.body, m.sent_at,"
            " m.server_ts FROM messages m"
            " JOIN unnest($1::text[], $2::bigint[], $3::bigint[]) AS w(conv, lo, hi)"
            " ON m.conv = w.conv AND m.seq > w.lo AND m.seq <= w.hi"
            " ORDER BY m.conv, m.seq LIMIT $4",
            convs,
            [cursors.get(c, 0) for c in convs],
            [upto[c] for c in convs],
            limit,
        )
        return [_message(r) for r in rows]

    # ------------------------------------------------------------ groups

    async def new_group_id(self) -> str:
        value = await self.pool.fetchval("SELECT nextval('group_ids')")
        return f"g{value}"

    async def groups_created_by(self, user: str) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM groups WHERE creator = $1", user))

    async def create_group(
        self, creator: str, members: Sequence[str], name: str, gid: str | None = None
    ) -> str:
        gid = gid or await self.new_group_id()
        conv = group_conv(gid)
        async with self.pool.acquire() as con, con.transaction():
            await con.execute(
                "INSERT INTO groups (gid, name, creator, created_at) VALUES ($1, $2, $3, $4)",
                gid,
                name,
                creator,
                time.time(),
            )
            await con.execute("INSERT INTO convs (conv) VALUES ($1) ON CONFLICT DO NOTHING", conv)
            await con.executemany(
                "INSERT INTO members (gid, user_id, joined_seq) VALUES ($1, $2, 0)",
                [(gid, m) for m in members],
            )
            await con.executemany(
                "INSERT INTO user_convs (user_id, conv) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                [(m, conv) for m in members],
            )
        return gid

    async def group_creator(self, gid: str) -> str | None:
        value = await self.pool.fetchval("SELECT creator FROM groups WHERE gid = $1", gid)
        return None if value is None else str(value)

    async def group_members(self, gid: str) -> list[str] | None:
        """The current members, or None when the group does not exist."""
        if await self.group_creator(gid) is None:
            return None
        rows = await self.pool.fetch(
            "SELECT user_id FROM members WHERE gid = $1 AND left_seq IS NULL ORDER BY user_id", gid
        )
        return [r["user_id"] for r in rows]

    async def membership(self, gid: str, user: str) -> Membership | None:
        row = await self.pool.fetchrow(
            "SELECT user_id, joined_seq, left_seq FROM members WHERE gid = $1 AND user_id = $2",
            gid,
            user,
        )
        return None if row is None else Membership(row[0], row[1], row[2])

    async def is_member(self, gid: str, user: str) -> bool:
        m = await self.membership(gid, user)
        return m is not None and m.active

    async def memberships(self, gids: Sequence[str]) -> dict[str, list[Membership]]:
        """Every membership, past and present, of each group in `gids` (one round trip)."""
        rows = await self.pool.fetch(
            "SELECT gid, user_id, joined_seq, left_seq FROM members WHERE gid = ANY($1::text[])",
            list(gids),
        )
        out: dict[str, list[Membership]] = {g: [] for g in gids}
        for r in rows:
            out[r["gid"]].append(Membership(r["user_id"], r["joined_seq"], r["left_seq"]))
        return out

    async def add_members(self, gid: str, users: Sequence[str]) -> tuple[list[str], int]:
        """Make `users` members from the next message on; returns those who were not, and
        the seq they joined after."""
        conv = group_conv(gid)
        async with self.pool.acquire() as con, con.transaction():
            # The conversation's row lock orders this change against concurrent sends.
            last = await con.fetchval("SELECT last_seq FROM convs WHERE conv = $1 FOR UPDATE", conv)
            rows = await con.fetch(
                "INSERT INTO members (gid, user_id, joined_seq) VALUES ($1, unnest($2::text[]), $3)"
                " ON CONFLICT (gid, user_id) DO UPDATE"
                " SET joined_seq = EXCLUDED.joined_seq, left_seq = NULL"
                " WHERE members.left_seq IS NOT NULL RETURNING user_id",
                gid,
                list(users),
                int(last or 0),
            )
            added = sorted(r["user_id"] for r in rows)
            await con.executemany(
                "INSERT INTO user_convs (user_id, conv) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                [(u, conv) for u in added],
            )
        return added, int(last or 0)

    async def remove_members(self, gid: str, users: Sequence[str]) -> list[str]:
        """End `users`' membership at the current seq; returns those who were members."""
        conv = group_conv(gid)
        async with self.pool.acquire() as con, con.transaction():
            last = await con.fetchval("SELECT last_seq FROM convs WHERE conv = $1 FOR UPDATE", conv)
            rows = await con.fetch(
                "UPDATE members SET left_seq = $3 WHERE gid = $1 AND user_id = ANY($2::text[])"
                " AND left_seq IS NULL RETURNING user_id",
                gid,
                list(users),
                int(last or 0),
            )
        return sorted(r["user_id"] for r in rows)

    # ------------------------------------------------------------ outbox

    async def outbox_take(self, older_than: float, limit: int, claim: float) -> list[OutboxRow]:
        """Rows waiting at least `older_than` seconds (the fast path had its chance),
        claimed for `claim` seconds so that another gateway's sweeper leaves them alone."""
        rows = await self.pool.fetch(
            "UPDATE outbox SET claimed_until = now() + make_interval(secs => $3)"
            " WHERE id IN (SELECT id FROM outbox"
            "  WHERE created_at < now() - make_interval(secs => $1) AND claimed_until < now()"
            "  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " RETURNING id, topic, key, payload",
            older_than,
            limit,
            claim,
        )
        out = [OutboxRow(r["id"], r["topic"], r["key"], bytes(r["payload"])) for r in rows]
        return sorted(out, key=lambda r: r.id)

    async def outbox_done(self, ids: Sequence[int]) -> None:
        if ids:
            await self.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", list(ids))

    async def outbox_release(self, ids: Sequence[int]) -> None:
        """Give claimed rows back at once (their publish failed: the next sweep retries)."""
        if ids:
            await self.pool.execute(
                "UPDATE outbox SET claimed_until = '-infinity' WHERE id = ANY($1::bigint[])",
                list(ids),
            )

    async def outbox_size(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM outbox"))

    # ------------------------------------------------------------ receipts

    async def record_receipts(self, items: Iterable[tuple[str, str, int]]) -> None:
        """(user, conv, seq): `user` holds every message of `conv` up to `seq`."""
        rows = list(items)
        if rows:
            await self.pool.executemany(
                "INSERT INTO receipts (user_id, conv, seq) VALUES ($1, $2, $3)"
                " ON CONFLICT (user_id, conv) DO UPDATE"
                " SET seq = GREATEST(receipts.seq, EXCLUDED.seq)",
                rows,
            )

    async def receipts(self, user: str) -> dict[str, int]:
        rows = await self.pool.fetch("SELECT conv, seq FROM receipts WHERE user_id = $1", user)
        return {r["conv"]: int(r["seq"]) for r in rows}

    async def unacknowledged(self, user: str, limit: int) -> list[Message]:
        """What `user` may see and has not acknowledged, oldest first per conversation."""
        seen = await self.visible(user)
        acked = await self.receipts(user)
        after = {conv: max(lo, acked.get(conv, 0)) for conv, (lo, _) in seen.items()}
        return await self.messages_after(after, {c: hi for c, (_, hi) in seen.items()}, limit)

    # ------------------------------------------------------------ revocations

    async def revoke(
        self,
        *,
        token_id: str | None = None,
        user: str | None = None,
        issued_before: float | None = None,
    ) -> int:
        """Revoke one token (`token_id`) or every token of `user` issued before a time."""
        if token_id is None and user is None:
            raise ValueError("revoke a token id or a user")
        value = await self.pool.fetchval(
            "INSERT INTO revocations (token_id, user_id, issued_before, at)"
            " VALUES ($1, $2, $3, $4) RETURNING id",
            token_id,
            user,
            issued_before,
            time.time(),
        )
        return int(value)

    async def revocations_after(self, last_id: int) -> list[Revocation]:
        rows = await self.pool.fetch(
            "SELECT id, token_id, user_id, issued_before FROM revocations"
            " WHERE id > $1 ORDER BY id",
            last_id,
        )
        return [Revocation(r[0], r[1], r[2], r[3]) for r in rows]
