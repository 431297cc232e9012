// Emulated inter-region links. All five spec regions (ORD, IAD, SJC, AMS, SYD) run on one machine,
// so the network between them is emulated: every message a process sends to a process in another
// region is held back by the one-way delay of that pair (config `swarm.emulation.one_way_latency`,
// half of public-cloud RTTs between the metros) and, when `swarm.emulation.bandwidth` is set, by
// its serialisation time at that rate. Delivery on one link stays in FIFO order, as on a TCP
// connection. Both ends shape what they send, so a request/response pays the full RTT.

import { invariant } from "../common/assert.ts";
import { oneWayLatencySeconds, type SwarmConfig } from "../config/schema.ts";

/** The emulated network between regions: one-way delay per pair and an optional link rate. */
export interface RegionLinks {
  /** One-way delay in ms from region `a` to region `b` (0 within a region or when unknown). */
  oneWayMs(a: string, b: string): number;
  /** Link rate in bits per second; undefined = unlimited. */
  readonly bitsPerSecond: number | undefined;
}

/** No emulation: every link is instantaneous. */
export const directLinks: RegionLinks = { oneWayMs: () => 0, bitsPerSecond: undefined };

/** The links of a config; disabled emulation gives zero delays. */
export function regionLinksFromConfig(cfg: SwarmConfig): RegionLinks {
  const enabled = cfg.swarm.emulation.enabled;
  const bandwidth = cfg.swarm.emulation.bandwidth?.bitsPerSecond;
  return {
    oneWayMs(a, b) {
      if (!enabled || a === "" || b === "" || a === b) return 0;
      return oneWayLatencySeconds(cfg, a, b) * 1000;
    },
    bitsPerSecond: enabled ? bandwidth : undefined,
  };
}

/**
 * Delays the sends of one directed link. `send(bytes, deliver)` runs `deliver` once the message
 * has "arrived": after the one-way delay plus, with a rate limit, the time to serialise it behind
 * earlier messages on the same link.
 */
export class LinkShaper {
  #txFreeAtMs = 0;
  #lastDeliverAtMs = 0;
  readonly #queue: { atMs: number; deliver: () => void }[] = [];
  #timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly oneWayMs: number,
    private readonly bitsPerSecond: number | undefined,
    private readonly nowMs: () => number = () => performance.now(),
  ) {
    invariant(oneWayMs >= 0 && Number.isFinite(oneWayMs), `one-way delay ${oneWayMs} ms`);
    invariant(bitsPerSecond === undefined || bitsPerSecond > 0, `link rate ${bitsPerSecond}`);
  }

  get shaping(): boolean {
    return this.oneWayMs > 0 || this.bitsPerSecond !== undefined;
  }

  send(bytes: number, deliver: () => void): void {
    if (!this.shaping) {
      deliver();
      return;
    }
    const now = this.nowMs();
    let departAt = now;
    if (this.bitsPerSecond !== undefined) {
      const start = Math.max(now, this.#txFreeAtMs);
      this.#txFreeAtMs = start + (bytes * 8 * 1000) / this.bitsPerSecond;
      departAt = this.#txFreeAtMs;
    }
    // One queue and one timer per link, so that delivery order is send order whatever the timer
    // rounding does.
    const atMs = Math.max(this.#lastDeliverAtMs, departAt + this.oneWayMs);
    this.#lastDeliverAtMs = atMs;
    this.#queue.push({ atMs, deliver });
    if (this.#queue.length === 1) this.#arm();
  }

  #arm(): void {
    const head = this.#queue[0];
    if (!head) return;
    this.#timer = setTimeout(() => this.#drain(), Math.max(0, head.atMs - this.nowMs()));
  }

  #drain(): void {
    this.#timer = undefined;
    const now = this.nowMs();
    while (this.#queue.length > 0 && (this.#queue[0]?.atMs ?? 0) <= now + 0.5) {
      this.#queue.shift()?.deliver();
    }
    this.#arm();
  }

  /** Messages sent but not yet delivered. */
  get pending(): number {
    return this.#queue.length;
  }

  /** Drops undelivered messages (the connection closed). */
  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#queue.length = 0;
  }
}
