// An expert node's own membership in the replicated registry: it registers itself (node id,
// region, GPU type, address) when it starts and sends a heartbeat every `heartbeatMs` through
// RegistryClient, so a heartbeat means "this process is alive and reaching a quorum of
// coordinators", not "someone else thinks it runs". The registry marks a node whose heartbeats stop
// as expired (registry.ts) and the gateway's placement view stops offering it.
//
// What it guarantees the data plane: nothing here is on a request path. The loop runs on its own
// timer; each registry call has a bounded deadline (`callDeadlineMs`); a failure (coordinators
// down, slow commit) is logged and retried at the next beat; a beat is skipped while the previous
// call is still out, so calls never pile up. A heartbeat refused with "unknown node" (the node was
// deregistered, e.g. by a new `up`) makes it register again.

import type { RegistryClient } from "./client.ts";

/** The two registry calls a node makes (RegistryClient has them; tests pass a fake). */
export type MembershipClient = Pick<RegistryClient, "registerNode" | "heartbeat">;

export interface NodeHeartbeatInit {
  readonly client: MembershipClient;
  readonly nodeId: string;
  readonly region: string;
  readonly gpuType: "a10" | "l40s" | "a100-80gb";
  /** host:port the gateway dials. */
  readonly address: string;
  readonly heartbeatMs: number;
  readonly log: (line: string) => void;
}

/** Heartbeat interval of `moe-swarm node --registry` when none is given. */
export const nodeHeartbeatMsDefault = 5_000;
export const nodeHeartbeatMsMin = 50;
/** Failures in a row after which only every tenth is logged (a long coordinator outage). */
const quietAfterFailures = 3;

export interface NodeHeartbeatStatus {
  readonly registered: boolean;
  readonly heartbeatsOk: number;
  readonly failures: number;
  readonly lastError: string | undefined;
}

export class NodeHeartbeat {
  readonly #init: NodeHeartbeatInit;
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  #stopped = false;
  #registered = false;
  #ok = 0;
  #failures = 0;
  #failuresInRow = 0;
  #lastError: string | undefined;

  constructor(init: NodeHeartbeatInit) {
    if (!Number.isInteger(init.heartbeatMs) || init.heartbeatMs < nodeHeartbeatMsMin)
      throw new RangeError(
        `heartbeat interval: expected an integer ≥ ${nodeHeartbeatMsMin} ms; got ${init.heartbeatMs}`,
      );
    this.#init = init;
  }

  status(): NodeHeartbeatStatus {
    return {
      registered: this.#registered,
      heartbeatsOk: this.#ok,
      failures: this.#failures,
      lastError: this.#lastError,
    };
  }

  /**
   * Registers once (resolves true when the registry committed it, false when it could not within
   * the client's deadline) and starts the heartbeat loop either way.
   */
  async start(): Promise<boolean> {
    await this.#beat();
    if (!this.#stopped) {
      this.#timer = setInterval(() => void this.#beat(), this.#init.heartbeatMs);
      this.#timer.unref();
    }
    return this.#registered;
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
  }

  async #beat(): Promise<void> {
    if (this.#busy || this.#stopped) return;
    this.#busy = true;
    const { client, nodeId } = this.#init;
    try {
      if (!this.#registered) {
        const r = await client.registerNode(
          nodeId,
          this.#init.region,
          this.#init.gpuType,
          this.#init.address,
        );
        if (!r.ok) throw new Error(`register ${nodeId}: ${r.error}`);
        this.#registered = true;
        this.#init.log(`registered ${nodeId} (${this.#init.address}) with the coordinators`);
      } else {
        const r = await client.heartbeat(nodeId);
        if (!r.ok) {
          if (/unknown node/.test(r.error)) this.#registered = false; // deregistered: join again
          throw new Error(`heartbeat ${nodeId}: ${r.error}`);
        }
      }
      this.#ok += 1;
      this.#failuresInRow = 0;
    } catch (err) {
      this.#failures += 1;
      this.#failuresInRow += 1;
      this.#lastError = (err as Error).message;
      if (
        !this.#stopped &&
        (this.#failuresInRow <= quietAfterFailures || this.#failuresInRow % 10 === 0)
      )
        this.#init.log(
          `registry ${this.#registered ? "heartbeat" : "registration"} failed (${this.#failuresInRow} in a row; retrying every ${this.#init.heartbeatMs} ms): ${this.#lastError}`,
        );
    } finally {
      this.#busy = false;
    }
  }
}
