// A plain Node.js Socket.IO relay with imlab v1's semantics (docs/PROTOCOL.md,
// versions/v1/server.py): what a user might pick instead of v1. One process, 1:1 only,
// nothing stored. Connect with auth {user}; `hello` is acked with the features; `send`
// {to, body, client_msg_id, sent_at} pushes `message` to the recipient's and the
// sender's sockets and acks, or refuses an offline recipient with `recipient_offline`.
// benchmarks/peer.py installs socket.io into .cache/node-peer and starts this:
//   node server.js PORT
"use strict";
const crypto = require("node:crypto");
const http = require("node:http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || process.env.PORT || 8000);
const node = `node-peer-${port}`;
const USER = /^[A-Za-z0-9_.-]{1,64}$/;
const sockets = new Map(); // user -> Set of sockets

const fail = (code, message) => ({ ok: false, error: { code, message } });
const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });

io.use((socket, next) => {
  const user = socket.handshake.auth && socket.handshake.auth.user;
  if (typeof user === "string" && USER.test(user)) {
    socket.data.user = user;
    return next();
  }
  const err = new Error('connect with auth {"user": "<id>"}');
  err.data = { code: "unauthorized", message: err.message };
  return next(err);
});

io.on("connection", (socket) => {
  const user = socket.data.user;
  if (!sockets.has(user)) sockets.set(user, new Set());
  sockets.get(user).add(socket);
  socket.on("disconnect", () => {
    const mine = sockets.get(user);
    mine.delete(socket);
    if (mine.size === 0) sockets.delete(user);
  });
  socket.on("hello", (_d, ack) => {
    if (typeof ack === "function") ack({ ok: true, stage: "node-peer", node, user, features: ["dm"] });
  });
  socket.on("send", (d, ack) => {
    if (typeof ack === "function") ack(send(user, d));
  });
  socket.onAny((event, ...args) => {
    const ack = args[args.length - 1];
    if (event !== "hello" && event !== "send" && typeof ack === "function") {
      ack(fail("unsupported", `event '${event}' is not supported`));
    }
  });
});

function send(user, d) {
  if (d === null || typeof d !== "object") return fail("bad_request", "send takes an object");
  if (d.group !== undefined) return fail("unsupported", "groups are not supported");
  if (typeof d.to !== "string" || !USER.test(d.to) || typeof d.body !== "string" ||
      typeof d.client_msg_id !== "string" || typeof d.sent_at !== "number") {
    return fail("bad_request", "send needs to, body, client_msg_id and sent_at");
  }
  if (!sockets.has(d.to)) return fail("recipient_offline", `${d.to} is not connected`);
  const conv = "dm:" + [user, d.to].sort().join(":");
  const msg_id = crypto.createHash("sha256")
    .update(`${conv}|${user}|${d.client_msg_id}`).digest("hex").slice(0, 20);
  const msg = { conv, msg_id, seq: null, sender: user, body: d.body, sent_at: d.sent_at,
                server_ts: Date.now() / 1000, client_msg_id: d.client_msg_id };
  for (const u of new Set([d.to, user])) {
    for (const s of sockets.get(u) || []) s.emit("message", msg);
  }
  return { ok: true, conv, msg_id, seq: null, server_ts: msg.server_ts };
}

httpServer.listen(port, "127.0.0.1", () => {
  console.log(`node-peer listening on http://127.0.0.1:${port}`);
});
