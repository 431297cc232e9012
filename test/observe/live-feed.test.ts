import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { after, describe, it } from "node:test";
import { WebSocket } from "ws";
import type { SwarmEvent } from "../../src/observe/dashboard-state.ts";
import { type FeedMessage, LiveFeed, type LiveFeedInit } from "../../src/observe/live-feed.ts";

const cleanups: (() => void)[] = [];
after(() => {
  for (const c of cleanups.reverse()) c();
});

async function waitFor(what: string, condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function serveFeed<S>(
  init: LiveFeedInit<S>,
): Promise<{ feed: LiveFeed<S>; url: string; port: number }> {
  const feed = new LiveFeed(init);
  const server: Server = createServer((_req, res) => res.writeHead(404).end());
  server.on("upgrade", (req, socket, head) => {
    if (!feed.handleUpgrade(req, socket, head)) socket.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  cleanups.push(() => {
    feed.close();
    server.close();
  });
  const port = (server.address() as AddressInfo).port;
  return { feed, url: `ws://127.0.0.1:${port}${feed.path}`, port };
}

function collect<S>(url: string): {
  ws: WebSocket;
  messages: FeedMessage<S>[];
  closed: Promise<number>;
} {
  const ws = new WebSocket(url);
  const messages: FeedMessage<S>[] = [];
  ws.on("message", (data) => messages.push(JSON.parse(String(data)) as FeedMessage<S>));
  const closed = new Promise<number>((resolve) => ws.on("close", (code) => resolve(code)));
  cleanups.push(() => ws.terminate());
  return { ws, messages, closed };
}

/** A WebSocket client that completes the handshake and then never reads: its TCP window fills. */
async function stalledClient(port: number): Promise<Socket> {
  const socket = connect(port, "127.0.0.1");
  cleanups.push(() => socket.destroy());
  await new Promise<void>((resolve) => socket.once("connect", resolve));
  socket.write(
    "GET /live HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  );
  const first = await new Promise<Buffer>((resolve) => socket.once("data", resolve));
  assert.match(first.toString("latin1"), /^HTTP\/1\.1 101 /);
  socket.pause();
  socket.on("error", () => {});
  return socket;
}

describe("live feed", () => {
  it("sends one message per tick with the snapshot and the events since the last one", async () => {
    let n = 0;
    let emit: (e: SwarmEvent) => void = () => {};
    const { url } = await serveFeed({
      snapshot: () => ({ n: ++n }),
      subscribe: (l) => {
        emit = l;
        return () => {};
      },
      intervalSeconds: 0.1,
    });
    const c = collect<{ n: number }>(url);
    await waitFor("first message", () => c.messages.length >= 1);
    emit({ at: 1, kind: "failover", message: "L0.E1: a → b (timeout)" });
    emit({ at: 2, kind: "view_change", message: "view 1 → 2" });
    await waitFor("events", () => c.messages.some((m) => m.events.length > 0));
    await waitFor("more ticks", () => c.messages.length >= 4);
    const withEvents = c.messages.filter((m) => m.events.length > 0);
    assert.equal(withEvents.length, 1);
    assert.deepEqual(
      withEvents[0]?.events.map((e) => e.kind),
      ["failover", "view_change"],
    );
    const seqs = c.messages.map((m) => m.seq);
    for (let i = 1; i < seqs.length; i++) assert.ok((seqs[i] as number) > (seqs[i - 1] as number));
    assert.ok(c.messages.every((m) => m.type === "update" && m.snapshot.n > 0));
  });

  it("coalesces snapshots and drops the oldest events for a client that does not read, keeps its buffer bounded, and disconnects it; a fast client is not held back", async () => {
    const pad = "x".repeat(1024 * 1024); // 1 MiB snapshots fill the socket buffers quickly
    let emitted = 0;
    let emit: (e: SwarmEvent) => void = () => {};
    const bufferedMax = 256 * 1024;
    const { feed, url, port } = await serveFeed({
      // Five events per tick, emitted while the tick builds its snapshot.
      snapshot: () => {
        for (let i = 0; i < 5; i++)
          emit({ at: emitted, kind: "canary_step", message: `e${emitted++}` });
        return { pad };
      },
      subscribe: (l) => {
        emit = l;
        return () => {};
      },
      intervalSeconds: 0.1,
      clientBufferedBytesMax: bufferedMax,
      clientEventsQueuedMax: 16,
      clientStalledSecondsMax: 1,
    });
    const fast = collect<{ pad: string }>(url);
    await waitFor("fast client connected", () => fast.messages.length >= 1);
    const slow = await stalledClient(port);
    const slowClosed = new Promise<void>((resolve) => slow.once("close", () => resolve()));
    await waitFor("slow client congested", () => feed.stats.snapshotsCoalesced > 0);
    await waitFor("slow client dropped events", () => feed.stats.eventsDropped > 0);
    await waitFor("slow client disconnected", () => feed.stats.clientsDisconnectedSlow === 1);
    slow.resume(); // let the socket see the server's reset
    await slowClosed;
    const seen = fast.messages.length;
    await waitFor("fast client still served", () => fast.messages.length >= seen + 3);

    const s = feed.stats;
    assert.equal(s.clients, 1);
    // Memory per client is bounded: never more unsent than the limit plus one message.
    assert.ok(s.messageBytesPeak > pad.length);
    assert.ok(
      s.bufferedBytesPeak <= bufferedMax + s.messageBytesPeak,
      `buffered peak ${s.bufferedBytesPeak} > ${bufferedMax} + ${s.messageBytesPeak}`,
    );
    // The fast client's events arrive in order, each once, and every emitted event is either
    // delivered or counted as dropped for it.
    const names = fast.messages.flatMap((m) => m.events.map((e) => Number(e.message.slice(1))));
    for (let i = 1; i < names.length; i++)
      assert.ok((names[i] as number) > (names[i - 1] as number));
    const last = fast.messages.at(-1) as FeedMessage<{ pad: string }>;
    const emittedBeforeLast = (names.at(-1) as number) + 1;
    const firstSeen = names[0] as number;
    assert.equal(names.length + last.droppedEvents, emittedBeforeLast - firstSeen);
  });

  it("refuses clients over the limit with 1013 and closes a client that sends a large message", async () => {
    const { feed, url } = await serveFeed({
      snapshot: () => ({}),
      intervalSeconds: 0.1,
      clientsMax: 1,
    });
    const a = collect(url);
    await waitFor("first client", () => a.messages.length >= 1);
    const b = collect(url);
    assert.equal(await b.closed, 1013);
    assert.equal(feed.stats.clientsRefused, 1);
    a.ws.send("x".repeat(4096));
    assert.equal(await a.closed, 1009); // message too big
    const c = collect(url);
    await waitFor("a new client after the first left", () => c.messages.length >= 1);
  });

  it("rejects an interval below the minimum", () => {
    assert.throws(() => new LiveFeed({ snapshot: () => ({}), intervalSeconds: 0.01 }), RangeError);
  });
});
