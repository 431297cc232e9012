// The live metrics feed of the dashboard (the spec's `quantum_metrics` exporter, `wss://…/metrics`,
// encoding `json`; "bell_state_tomography" names no real encoding, so the feed sends JSON): a
// WebSocket endpoint (RFC 6455, the `ws` package) that sends each client one message per tick with
// the latest dashboard snapshot and the events since its last message.
//
// Bounded rate and backpressure, per client:
//   - at most one message per tick (`intervalSeconds`, never below feedSnapshotIntervalSecondsMin);
//     the snapshot is serialised once per tick and the same string goes to every client;
//   - a client whose unsent bytes (ws.bufferedAmount) exceed `clientBufferedBytesMax` is skipped:
//     its snapshots coalesce (it gets the newest one when it drains), its events queue up to
//     `clientEventsQueuedMax`, after which the oldest are dropped and counted — the server's memory
//     per client stays bounded by the limit plus one message;
//   - a client congested for longer than `clientStalledSecondsMax` is disconnected;
//   - at most `clientsMax` clients; clients may send nothing but tiny messages (ignored).

import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocket, WebSocketServer } from "ws";
import { invariant } from "../common/assert.ts";
import {
  feedClientBufferedBytesMax,
  feedClientEventsQueuedMax,
  feedClientMessageBytesMax,
  feedClientStalledSecondsMax,
  feedClientsMax,
  feedSnapshotIntervalSeconds,
  feedSnapshotIntervalSecondsMin,
} from "./constants.ts";
import type { SwarmEvent } from "./dashboard-state.ts";
import { pathOf } from "./http-route.ts";

export const liveFeedPath = "/live";

/** One message of the feed. */
export interface FeedMessage<S> {
  readonly type: "update";
  /** Tick number; a client that was skipped sees a gap. */
  readonly seq: number;
  readonly snapshot: S;
  readonly events: readonly SwarmEvent[];
  /** Events dropped for this client so far because it read too slowly. */
  readonly droppedEvents: number;
}

export interface LiveFeedInit<S> {
  /** Builds the snapshot for a tick (called once per tick, only when a client is connected). */
  readonly snapshot: () => S;
  /** Subscribes to events; returns the unsubscribe function (e.g. SwarmMetrics.onEvent). */
  readonly subscribe?: (listener: (event: SwarmEvent) => void) => () => void;
  readonly path?: string;
  readonly intervalSeconds?: number;
  readonly clientBufferedBytesMax?: number;
  readonly clientEventsQueuedMax?: number;
  readonly clientStalledSecondsMax?: number;
  readonly clientsMax?: number;
  /** Monotonic clock in ms (default performance.now). */
  readonly now?: () => number;
}

export interface LiveFeedStats {
  readonly clients: number;
  readonly ticks: number;
  readonly messagesSent: number;
  /** Snapshots not sent to a congested client (it got a newer one later). */
  readonly snapshotsCoalesced: number;
  readonly eventsDropped: number;
  readonly clientsDisconnectedSlow: number;
  readonly clientsRefused: number;
  /** Largest ws.bufferedAmount seen right after a send, in bytes. */
  readonly bufferedBytesPeak: number;
  /** Largest message sent, in bytes. */
  readonly messageBytesPeak: number;
}

interface Client {
  readonly ws: WebSocket;
  queue: SwarmEvent[];
  droppedEvents: number;
  congestedSinceMs: number | null;
}

export class LiveFeed<S> {
  readonly path: string;
  readonly #init: LiveFeedInit<S>;
  readonly #wss: WebSocketServer;
  readonly #clients = new Set<Client>();
  readonly #intervalMs: number;
  readonly #bufferedMax: number;
  readonly #queuedMax: number;
  readonly #stalledMs: number;
  readonly #clientsMax: number;
  readonly #now: () => number;
  readonly #unsubscribe: (() => void) | undefined;
  #timer: NodeJS.Timeout | null = null;
  #seq = 0;
  #closed = false;
  #stats = {
    ticks: 0,
    messagesSent: 0,
    snapshotsCoalesced: 0,
    eventsDropped: 0,
    clientsDisconnectedSlow: 0,
    clientsRefused: 0,
    bufferedBytesPeak: 0,
    messageBytesPeak: 0,
  };

  constructor(init: LiveFeedInit<S>) {
    this.#init = init;
    this.path = init.path ?? liveFeedPath;
    const interval = init.intervalSeconds ?? feedSnapshotIntervalSeconds;
    if (!(interval >= feedSnapshotIntervalSecondsMin)) {
      throw new RangeError(
        `live feed interval must be ≥ ${feedSnapshotIntervalSecondsMin} s; got ${interval}`,
      );
    }
    this.#intervalMs = interval * 1000;
    this.#bufferedMax = init.clientBufferedBytesMax ?? feedClientBufferedBytesMax;
    this.#queuedMax = init.clientEventsQueuedMax ?? feedClientEventsQueuedMax;
    this.#stalledMs = (init.clientStalledSecondsMax ?? feedClientStalledSecondsMax) * 1000;
    this.#clientsMax = init.clientsMax ?? feedClientsMax;
    this.#now = init.now ?? (() => performance.now());
    invariant(this.#bufferedMax > 0 && this.#queuedMax > 0, "feed limits must be positive");
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: feedClientMessageBytesMax,
      perMessageDeflate: false,
    });
    this.#unsubscribe = init.subscribe?.((event) => this.#onEvent(event));
  }

  get stats(): LiveFeedStats {
    return { clients: this.#clients.size, ...this.#stats };
  }

  /**
   * Takes an HTTP upgrade for this feed's path (mount on the server's "upgrade" event). Returns
   * false, leaving the socket alone, for another path.
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    if (pathOf(req) !== this.path) return false;
    if (this.#closed) {
      socket.destroy();
      return true;
    }
    socket.on("error", () => {});
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#accept(ws));
    return true;
  }

  #accept(ws: WebSocket): void {
    if (this.#clients.size >= this.#clientsMax) {
      this.#stats.clientsRefused++;
      ws.close(1013, "too many live-feed clients; try again later");
      return;
    }
    const client: Client = { ws, queue: [], droppedEvents: 0, congestedSinceMs: null };
    this.#clients.add(client);
    ws.on("error", () => {});
    ws.on("close", () => {
      this.#clients.delete(client);
      if (this.#clients.size === 0) this.#stopTimer();
    });
    // The first message goes at once, so a page shows numbers without waiting a tick.
    this.#send(client, this.#message(this.#init.snapshot(), client));
    if (!this.#timer) {
      this.#timer = setInterval(() => this.#tick(), this.#intervalMs);
      this.#timer.unref();
    }
  }

  #message(snapshot: S, client: Client): string {
    const events = client.queue;
    client.queue = [];
    const msg: FeedMessage<S> = {
      type: "update",
      seq: this.#seq,
      snapshot,
      events,
      droppedEvents: client.droppedEvents,
    };
    return JSON.stringify(msg);
  }

  #onEvent(event: SwarmEvent): void {
    for (const client of this.#clients) {
      client.queue.push(event);
      if (client.queue.length > this.#queuedMax) {
        client.queue.shift();
        client.droppedEvents++;
        this.#stats.eventsDropped++;
      }
    }
  }

  #tick(): void {
    this.#seq++;
    this.#stats.ticks++;
    if (this.#clients.size === 0) return;
    const now = this.#now();
    // Serialise the snapshot once; each client's message splices in its own events.
    const snapshotJson = JSON.stringify(this.#init.snapshot());
    for (const client of this.#clients) {
      if (client.ws.readyState !== WebSocket.OPEN) continue;
      if (client.ws.bufferedAmount > this.#bufferedMax) {
        client.congestedSinceMs ??= now;
        this.#stats.snapshotsCoalesced++;
        if (now - client.congestedSinceMs > this.#stalledMs) {
          this.#stats.clientsDisconnectedSlow++;
          this.#clients.delete(client);
          client.ws.terminate();
        }
        continue;
      }
      client.congestedSinceMs = null;
      const events = client.queue;
      client.queue = [];
      const text = `{"type":"update","seq":${this.#seq},"snapshot":${snapshotJson},"events":${JSON.stringify(events)},"droppedEvents":${client.droppedEvents}}`;
      this.#send(client, text);
    }
  }

  #send(client: Client, text: string): void {
    client.ws.send(text);
    this.#stats.messagesSent++;
    const bytes = Buffer.byteLength(text);
    if (bytes > this.#stats.messageBytesPeak) this.#stats.messageBytesPeak = bytes;
    const buffered = client.ws.bufferedAmount;
    if (buffered > this.#stats.bufferedBytesPeak) this.#stats.bufferedBytesPeak = buffered;
  }

  #stopTimer(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Closes every client (1001 going away) and stops the ticks. */
  close(): void {
    this.#closed = true;
    this.#stopTimer();
    this.#unsubscribe?.();
    for (const client of this.#clients) client.ws.close(1001, "server shutting down");
    this.#clients.clear();
    this.#wss.close();
  }
}
