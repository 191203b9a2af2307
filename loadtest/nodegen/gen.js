// imlab's second load generator: the same open-loop plan as the Locust users
// (loadtest/users.py), played by Node.js and the official Socket.IO client, for rates
// one Locust process per core cannot offer. It speaks the runner's file protocol
// (loadtest/protocol.py): it reads plan.json and the parts the runner wrote for it
// (loadtest/nodegen.py), follows control.json (the send window, then the final
// catch-up), writes status-<pid>.json every half second and one history file, in
// the history format of imlab/experiment/history.py.
//
//   NODE_PATH=<socket.io-client's node_modules> node gen.js PARTS.json SLICE SLICES
//
// Plays the users whose index % SLICES == SLICE. Each user has its own connection
// (forceNew); sends go out at their slots whatever acks are outstanding (a stricter
// open loop than a blocking client's). No churn, no faults of its own: those
// scenarios stay with Locust.
//
// A warm-up (control.json's `warm_start` before `send_start`) plays the same schedule
// unrecorded: its messages carry client ids starting "warm-", pass through the inbox
// (they take seqs) and leave no event in the history, so the checker judges only the
// measured window, on a stage whose JVM (the Kafka broker) has compiled its hot paths.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const crypto = require("node:crypto");
const { performance } = require("node:perf_hooks");
const { io } = require("socket.io-client");

const [partsPath, sliceArg, slicesArg] = process.argv.slice(2);
const SLICE = Number(sliceArg || 0);
const SLICES = Number(slicesArg || 1);
const parts = JSON.parse(fs.readFileSync(partsPath, "utf8"));
const loadgen = path.dirname(partsPath);
const runDir = path.dirname(loadgen);

const ACK_TIMEOUT_MS = 10000;
const CONNECT_ATTEMPTS = 5;
const GAP_PATIENCE_S = 0.5;
const SYNC_PAGE = 200;
const LATE_S = 0.1;
const WARM = "warm-"; // imlab/experiment/history.py WARMUP_PREFIX: nothing is recorded for these
const now = () => (performance.timeOrigin + performance.now()) / 1000;

const stats = {
  started: 0, online: 0, ever_connected: 0, connect_failed: 0, finished: 0,
  final_synced: 0, drops: 0, silent_drops: 0, returns: 0, dropped_pushes: 0,
  skipped_offline: 0, skipped_after_window: 0, late_sends: 0, send_errors: 0,
  shut_out: 0, stopped_early: 0, surplus: 0, warmup_sends: 0,
};
const counts = {};
let lagMax = 0;
let lagMaxAll = 0;

// ------------------------------------------------------------------ history

const historyPath = path.join(runDir, `history-node${SLICE}-${process.pid}.jsonl`);
let pending = [];

function record(u, ev, fields) {
  const rec = { t: now(), ev, user: u.user, ...fields };
  if (u.node) rec.node = u.node;
  const key = ev === "recv" ? `recv_${fields.via}` : ev === "ack" ? (fields.ok ? "ack_ok" : "ack_err") : ev;
  counts[key] = (counts[key] || 0) + 1;
  pending.push(JSON.stringify(rec));
}

function flush() {
  if (pending.length === 0) return;
  fs.appendFileSync(historyPath, pending.join("\n") + "\n");
  pending = [];
}

function writeStatus() {
  const cpu = process.cpuUsage();
  const status = {
    pid: process.pid, worker: SLICE, t: now(), ...stats, events: { ...counts },
    lag_max_s: Math.round(lagMax * 1e4) / 1e4, lag_max_all_s: Math.round(lagMaxAll * 1e4) / 1e4,
    cpu_s: (cpu.user + cpu.system) / 1e6,
  };
  lagMax = 0;
  const file = path.join(loadgen, `status-${process.pid}.json`);
  const tmp = path.join(loadgen, `.status-${process.pid}.tmp`);
  fs.writeFileSync(tmp, JSON.stringify(status));
  fs.renameSync(tmp, file);
}

// ------------------------------------------------------------------ one user

class User {
  constructor(part) {
    Object.assign(this, part); // index, user, token, url, to, group, conv, phase
    this.node = null;
    this.features = new Set();
    this.socket = null;
    this.online = false;
    this.maxSeq = new Map(); // conv -> highest contiguous seq delivered
    this.waiting = new Map(); // conv -> Map(seq -> message) held behind a gap
    this.gapSince = null;
    this.repairing = false;
    this.receipted = new Map();
    this.receiptsAcked = new Map();
    this.receiptsInFlight = new Set();
    this.ids = 0;
    this.idPrefix = `${this.user}-${crypto.randomBytes(4).toString("hex")}`;
    this.done = false;
  }

  ask(event, data) {
    return new Promise((resolve) => {
      this.socket.timeout(ACK_TIMEOUT_MS).emit(event, data, (err, ack) => {
        resolve(err || ack === null || typeof ack !== "object" ? null : ack);
      });
    });
  }

  async connect() {
    for (let attempt = 0; attempt < CONNECT_ATTEMPTS; attempt++) {
      if (await this.dial()) {
        stats.ever_connected += 1;
        return true;
      }
      await sleep(200 * 2 ** attempt);
    }
    stats.connect_failed += 1;
    return false;
  }

  dial() {
    const auth = this.token ? { token: this.token } : { user: this.user };
    const socket = io(this.url, {
      transports: ["websocket"], auth, reconnection: false, forceNew: true, timeout: 10000,
    });
    return new Promise((resolve) => {
      socket.once("connect_error", () => {
        socket.close();
        resolve(false);
      });
      socket.once("connect", async () => {
        this.socket = socket;
        socket.on("message", (m) => this.pushed(m));
        socket.on("disconnect", (reason) => {
          if (this.online) stats.online -= 1;
          this.online = false;
          record(this, "disconnect", { reason });
        });
        const hello = await this.ask("hello", {});
        if (!hello || !hello.ok) {
          socket.close();
          resolve(false);
          return;
        }
        this.node = hello.node || null;
        this.features = new Set(hello.features || []);
        if (this.token && typeof hello.user === "string") this.user = hello.user;
        record(this, "connect", { url: this.url });
        this.online = true;
        stats.online += 1;
        resolve(true);
      });
    });
  }

  // --- sending, on the plan's schedule

  play(warmStart, sendStart, sendEnd) {
    const period = 1 / parts.rate;
    const base = warmStart + this.phase;
    let k = Math.max(0, Math.ceil((now() - base) / period - 1e-9));
    const next = () => {
      const intended = base + k * period;
      if (intended >= sendEnd) return;
      const wait = (intended - now()) * 1000;
      if (wait > 0) {
        setTimeout(next, wait);
        return;
      }
      const t = now();
      if (intended < sendStart) {
        if (this.online) this.send(k, intended, true);
        k += 1;
        setImmediate(next);
        return;
      }
      if (t >= sendEnd) {
        stats.skipped_after_window += Math.max(0, Math.ceil((sendEnd - base) / period - 1e-9) - k);
        return;
      }
      const lag = t - intended;
      lagMax = Math.max(lagMax, lag);
      lagMaxAll = Math.max(lagMaxAll, lag);
      if (lag > LATE_S) stats.late_sends += 1;
      if (this.online) this.send(k, intended);
      else stats.skipped_offline += 1;
      k += 1;
      setImmediate(next);
    };
    next();
  }

  send(k, intended, warm = false) {
    const head = `${this.user} #${k} `;
    const body = head + ".".repeat(Math.max(0, parts.body_bytes - head.length));
    this.ids += 1;
    const cmid = `${warm ? WARM : ""}${this.idPrefix}-${this.ids}`;
    const sentAt = now();
    const payload = { client_msg_id: cmid, body, sent_at: sentAt };
    if (this.group) payload.group = this.group;
    else payload.to = this.to;
    if (warm) {
      stats.warmup_sends += 1;
      this.ask("send", payload);
      return;
    }
    record(this, "send", { conv: this.conv, msg: cmid, intended });
    this.ask("send", payload).then((ack) => {
      if (ack === null) {
        stats.send_errors += 1; // no ack: the send stays unacknowledged, as in Python
        return;
      }
      const err = ack.ok ? null : (ack.error && ack.error.code) || "unknown";
      if (!ack.ok) stats.send_errors += 1;
      record(this, "ack", { conv: this.conv, msg: cmid, ok: Boolean(ack.ok), err, seq: ack.seq ?? null });
    });
  }

  // --- receiving, in seq order (imlab/client/inbox.py)

  pushed(m) {
    if (this.done) return;
    const released = this.accept(m, "push");
    if (released === null) return;
    this.delivered(released);
    if (m.seq !== null && m.seq !== undefined) this.receipt(m.conv);
  }

  accept(m, via) {
    if (m === null || typeof m !== "object" || typeof m.conv !== "string") return null;
    if (m.seq === null || m.seq === undefined) return [[m, via]];
    const conv = m.conv;
    const cur = this.maxSeq.get(conv) || 0;
    if (m.seq <= cur) return [];
    let waiting = this.waiting.get(conv);
    if (m.seq !== cur + 1) {
      if (!waiting) this.waiting.set(conv, (waiting = new Map()));
      if (!waiting.has(m.seq)) waiting.set(m.seq, [m, via]);
      if (this.gapSince === null) this.gapSince = now();
      return [];
    }
    const out = [[m, via]];
    let nxt = m.seq + 1;
    while (waiting && waiting.has(nxt)) {
      out.push(waiting.get(nxt));
      waiting.delete(nxt);
      nxt += 1;
    }
    this.maxSeq.set(conv, nxt - 1);
    if (waiting && waiting.size === 0) this.waiting.delete(conv);
    if (this.waiting.size === 0) this.gapSince = null;
    return out;
  }

  startAfter(conv, seq) {
    const cur = this.maxSeq.get(conv) || 0;
    if (seq <= cur) return [];
    const waiting = this.waiting.get(conv) || new Map();
    for (const s of [...waiting.keys()]) if (s <= seq) waiting.delete(s);
    const out = [];
    let nxt = seq + 1;
    while (waiting.has(nxt)) {
      out.push(waiting.get(nxt));
      waiting.delete(nxt);
      nxt += 1;
    }
    this.maxSeq.set(conv, nxt - 1);
    if (waiting.size === 0) this.waiting.delete(conv);
    return out;
  }

  delivered(released) {
    for (const [m, via] of released) {
      if (typeof m.client_msg_id === "string" && m.client_msg_id.startsWith(WARM)) continue;
      record(this, "recv", {
        conv: m.conv, msg: m.client_msg_id, seq: m.seq ?? null, sender: m.sender, via,
      });
    }
  }

  // --- receipts (stages with feature "receipts": one in flight per conversation)

  receipt(conv) {
    if (!this.features.has("receipts") || this.receiptsInFlight.has(conv) || !this.online) return;
    const seq = this.maxSeq.get(conv) || 0;
    if (seq <= (this.receipted.get(conv) || 0)) return;
    this.receipted.set(conv, seq);
    this.receiptsInFlight.add(conv);
    this.ask("receipt", { conv, seq }).then((ack) => {
      this.receiptsInFlight.delete(conv);
      if (ack && ack.ok === true) {
        this.receiptsAcked.set(conv, Math.max(seq, this.receiptsAcked.get(conv) || 0));
        this.receipt(conv);
      } else if (this.receipted.get(conv) === seq) {
        this.receipted.set(conv, this.receiptsAcked.get(conv) || 0);
      }
    });
  }

  // --- catch-up: the seed's latest/sync rule (imlab/client/core.py, catch_up)

  async syncConv(conv, latest) {
    for (;;) {
      const after = this.maxSeq.get(conv) || 0;
      if (latest >= 0 && latest <= after) break;
      const ack = await this.ask("sync", { conv, after_seq: after, limit: SYNC_PAGE });
      if (!ack || !ack.ok) break;
      const messages = ack.messages || [];
      if (Number.isInteger(ack.visible_from) && ack.visible_from > after) {
        this.delivered(this.startAfter(conv, ack.visible_from));
      }
      for (const m of messages) {
        const released = this.accept(m, "sync");
        if (released) this.delivered(released);
      }
      record(this, "sync", {
        conv, after_seq: after, n: messages.length, latest_seq: ack.latest_seq ?? null,
      });
      latest = Number(ack.latest_seq || 0);
      if (messages.length === 0 || !ack.has_more) break;
    }
    this.receipt(conv);
  }

  async repairGaps() {
    if (this.repairing || this.gapSince === null || !this.online) return;
    if (now() - this.gapSince < GAP_PATIENCE_S) return;
    this.repairing = true;
    this.gapSince = null;
    try {
      for (const conv of [...this.waiting.keys()]) await this.syncConv(conv, -1);
    } finally {
      this.repairing = false;
      if (this.waiting.size > 0) this.gapSince = now();
    }
  }

  async finish() {
    if (this.online && this.features.has("history")) {
      const ack = await this.ask("latest", {});
      if (ack && ack.ok) {
        for (const [conv, y] of Object.entries(ack.seqs || {})) await this.syncConv(conv, Number(y));
        for (const conv of [...this.waiting.keys()]) await this.syncConv(conv, -1);
        stats.final_synced += 1;
      }
    } else if (this.online) {
      stats.final_synced += 1;
    }
    this.done = true;
    if (this.online) stats.online -= 1;
    this.online = false;
    if (this.socket) this.socket.close();
    stats.finished += 1;
  }
}

// ------------------------------------------------------------------ the run

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function readControl() {
  try {
    return JSON.parse(fs.readFileSync(path.join(loadgen, "control.json"), "utf8"));
  } catch {
    return null; // absent or being replaced: read it next time
  }
}

async function main() {
  const mine = parts.users.filter((p) => p.index % SLICES === SLICE).map((p) => new User(p));
  stats.started = mine.length;
  const housekeeping = setInterval(() => {
    for (const u of mine) u.repairGaps();
    writeStatus();
    flush();
  }, 500);
  const spawnGap = 1000 / Math.max(1, parts.spawn_rate / SLICES);
  const connected = [];
  for (const u of mine) {
    connected.push(u.connect());
    await sleep(spawnGap);
  }
  const ok = await Promise.all(connected);
  const players = mine.filter((_, i) => ok[i]);
  for (const [i, u] of mine.entries()) if (!ok[i]) { u.done = true; stats.finished += 1; }
  let control = null;
  while (!(control && control.send_start != null && control.send_end != null)) {
    await sleep(100);
    control = readControl();
  }
  const warmStart = control.warm_start ?? control.send_start;
  for (const u of players) u.play(warmStart, control.send_start, control.send_end);
  while (!(control && control.final)) {
    await sleep(200);
    control = readControl() || control;
  }
  await Promise.all(players.map((u) => u.finish()));
  clearInterval(housekeeping);
  writeStatus();
  flush();
  // stay until the runner stops us: it reads an exited generator as a crashed one
  setInterval(() => {}, 60000);
}

for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => {
    try { writeStatus(); flush(); } finally { process.exit(0); }
  });
}
main().catch((err) => {
  console.error(err);
  try { writeStatus(); flush(); } finally { process.exit(1); }
});
