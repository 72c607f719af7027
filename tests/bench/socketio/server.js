// Socket.IO 4 peer of core4d for the side-by-side benchmarks: the same architecture (every message
// persisted in PostgreSQL before it is delivered, instances joined through PostgreSQL), written the
// way the Socket.IO documentation suggests, with default settings.
//
//   PORT=5101 DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres node server.js
//
// Environment: PORT (default 5101), HOST (default 127.0.0.1), DATABASE_URL (required),
// PG_POOL_MAX (default 10, node-postgres' own default).
//
// Events a client may send:
//   subscribe(channel, ack?)       joins the room `channel`; ack(true) once joined.
//   publish({channel, text}, ack?) per message: one INSERT into socketio_bench_messages in its own
//                                  autocommit transaction (committed, so flushed to disk when the
//                                  cluster has fsync and synchronous_commit on, the defaults); only
//                                  after the commit io.to(channel).emit('event', {id, channel, text})
//                                  and ack({id}). On error: ack({error}).
// What the emit costs per message (library behaviour, not ours): the postgres adapter first
// sends the packet to the other instances with `SELECT pg_notify(...)` (a second round trip
// through the pool, and a second commit, since NOTIFY needs a transaction id), then this instance
// encodes the packet once and writes one WebSocket frame to each local socket in the room. Other
// instances receive the NOTIFY on their LISTEN connection and deliver to their own sockets.
"use strict";

const http = require("node:http");
const pg = require("pg");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/postgres-adapter");

const PORT = Number(process.env.PORT || 5101);
const HOST = process.env.HOST || "127.0.0.1";
const DATABASE_URL = process.env.DATABASE_URL;
if (!DATABASE_URL) {
  console.error("DATABASE_URL is required, e.g. postgres://postgres@127.0.0.1:5432/postgres");
  process.exit(2);
}

const pool = new pg.Pool({
  connectionString: DATABASE_URL,
  max: Number(process.env.PG_POOL_MAX || 10),
});
pool.on("error", (err) => console.error("postgres pool error:", err.message));

// Two instances may start at once: serialise the schema set-up with an advisory lock.
async function createSchema() {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query("SELECT pg_advisory_xact_lock(4711004)");
    await client.query(`CREATE TABLE IF NOT EXISTS socketio_bench_messages (
      id         bigserial PRIMARY KEY,
      channel    text        NOT NULL,
      text       text        NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now())`);
    // The adapter's table for payloads over NOTIFY's 8,000-byte limit (its README creates it).
    await client.query(`CREATE TABLE IF NOT EXISTS socket_io_attachments (
      id         bigserial UNIQUE,
      created_at timestamptz DEFAULT now(),
      payload    bytea)`);
    await client.query("COMMIT");
  } catch (err) {
    await client.query("ROLLBACK").catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}

function isChannel(c) {
  return typeof c === "string" && c.length > 0 && c.length <= 200;
}

async function main() {
  await createSchema();

  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pool) });

  io.on("connection", (socket) => {
    socket.on("subscribe", (channel, ack) => {
      if (!isChannel(channel)) {
        if (typeof ack === "function") ack({ error: "channel must be a non-empty string" });
        return;
      }
      socket.join(channel);
      if (typeof ack === "function") ack(true);
    });

    socket.on("publish", async (msg, ack) => {
      const reply = typeof ack === "function" ? ack : () => {};
      if (!msg || !isChannel(msg.channel) || typeof msg.text !== "string") {
        reply({ error: "expected {channel, text}" });
        return;
      }
      let id;
      try {
        const res = await pool.query(
          "INSERT INTO socketio_bench_messages (channel, text) VALUES ($1, $2) RETURNING id",
          [msg.channel, msg.text],
        );
        id = Number(res.rows[0].id);
      } catch (err) {
        reply({ error: "not stored: " + err.message });
        return;
      }
      io.to(msg.channel).emit("event", { id, channel: msg.channel, text: msg.text });
      reply({ id });
    });
  });

  httpServer.listen(PORT, HOST, () => {
    console.log(`socketio listening on http://${HOST}:${PORT} pid=${process.pid}`);
  });

  const stop = () => {
    io.close();
    pool.end().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error("socketio server failed:", err.message);
  process.exit(1);
});
