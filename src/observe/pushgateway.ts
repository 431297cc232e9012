// The spec's push exporter (`metrics.exporters[type=prometheus].endpoint`): pushes this process's
// registry to a Prometheus Pushgateway (https://github.com/prometheus/pushgateway) every
// `push_interval`, with PUT to <endpoint>/metrics/job/<job>/instance/<process> (prom-client's
// Pushgateway builds the path). A failed push is logged and retried with capped exponential backoff
// and jitter (delay_n = min(max, min·2^n) · U[0.5, 1)); it never throws into the process and never
// stops the loop. The pull endpoint `/metrics` is served either way.

import client from "prom-client";
import { Prng } from "../common/prng.ts";
import type { SwarmConfig } from "../config/schema.ts";
import {
  pushIntervalSecondsDefault,
  pushRetryDelaySecondsMax,
  pushRetryDelaySecondsMin,
  pushTimeoutSeconds,
} from "./constants.ts";
import type { SwarmMetrics } from "./metrics.ts";

export interface PushTarget {
  readonly url: string;
  readonly intervalSeconds: number;
}

/** The Pushgateway named in the config, or null when none is configured. */
export function pushTargetFromConfig(config: SwarmConfig): PushTarget | null {
  for (const exporter of config.metrics.exporters) {
    if (exporter.type === "prometheus" && exporter.endpoint) {
      return {
        url: exporter.endpoint,
        intervalSeconds: exporter.push_interval?.seconds ?? pushIntervalSecondsDefault,
      };
    }
  }
  return null;
}

export interface PushLoopInit {
  readonly target: PushTarget;
  readonly metrics: SwarmMetrics;
  readonly job?: string;
  /** Where failures and recoveries are reported (default: console.warn). */
  readonly log?: (message: string) => void;
  /** Seeds the backoff jitter. */
  readonly seed?: number;
  readonly retryDelaySecondsMin?: number;
  readonly retryDelaySecondsMax?: number;
  readonly timeoutSeconds?: number;
}

export interface PushStats {
  readonly pushes: number;
  readonly failures: number;
  readonly consecutiveFailures: number;
  readonly lastError: string | null;
}

export class PushLoop {
  readonly #init: PushLoopInit;
  readonly #gateway: client.Pushgateway<client.RegistryContentType>;
  readonly #prng: Prng;
  readonly #log: (message: string) => void;
  readonly #failuresTotal: client.Counter<string>;
  #timer: NodeJS.Timeout | null = null;
  #stopped = false;
  #inFlight: Promise<void> | null = null;
  #pushes = 0;
  #failures = 0;
  #consecutive = 0;
  #lastError: string | null = null;

  constructor(init: PushLoopInit) {
    this.#init = init;
    const timeoutMs = (init.timeoutSeconds ?? pushTimeoutSeconds) * 1000;
    this.#gateway = new client.Pushgateway(
      init.target.url,
      { timeout: timeoutMs },
      init.metrics.registry,
    );
    this.#prng = new Prng(init.seed ?? 0x5eed);
    this.#log = init.log ?? ((m) => console.warn(m));
    const name = "moe_swarm_pushgateway_failures_total";
    const existing = init.metrics.registry.getSingleMetric(name);
    this.#failuresTotal =
      (existing as client.Counter<string> | undefined) ??
      new client.Counter({
        name,
        help: "Failed pushes to the Pushgateway (each is retried with backoff)",
        registers: [init.metrics.registry],
      });
  }

  /** Pushes now, then every interval (or sooner after a failure). Returns immediately. */
  start(): void {
    if (this.#stopped || this.#timer || this.#inFlight) return;
    this.#schedule(0);
  }

  /** Stops the loop; waits for a push in flight to settle. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    await this.#inFlight;
  }

  get stats(): PushStats {
    return {
      pushes: this.#pushes,
      failures: this.#failures,
      consecutiveFailures: this.#consecutive,
      lastError: this.#lastError,
    };
  }

  /** The delay before retry number `attempt` (1-based), in seconds. */
  retryDelaySeconds(attempt: number): number {
    const min = this.#init.retryDelaySecondsMin ?? pushRetryDelaySecondsMin;
    const max = this.#init.retryDelaySecondsMax ?? pushRetryDelaySecondsMax;
    const base = Math.min(max, min * 2 ** Math.min(attempt - 1, 30));
    return base * (0.5 + 0.5 * this.#prng.next());
  }

  #schedule(seconds: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#inFlight = this.#pushOnce().finally(() => {
        this.#inFlight = null;
      });
    }, seconds * 1000);
    this.#timer.unref();
  }

  async #pushOnce(): Promise<void> {
    const job = this.#init.job ?? "moe_swarm";
    try {
      // prom-client's Pushgateway reads the registry directly: run the on-demand collectors first,
      // as a scrape does (a coordinator's view, height and rounds are read that way).
      this.#init.metrics.collect();
      await this.#gateway.push({
        jobName: job,
        groupings: { instance: this.#init.metrics.process },
      });
      this.#pushes++;
      if (this.#consecutive > 0) {
        this.#log(
          `pushgateway ${this.#init.target.url}: push succeeded after ${this.#consecutive} failures`,
        );
      }
      this.#consecutive = 0;
      this.#schedule(this.#init.target.intervalSeconds);
    } catch (err) {
      this.#failures++;
      this.#consecutive++;
      this.#failuresTotal.inc();
      this.#lastError = err instanceof Error ? err.message : String(err);
      const delay = this.retryDelaySeconds(this.#consecutive);
      this.#log(
        `pushgateway ${this.#init.target.url}: push failed (${this.#lastError}); retry ${this.#consecutive} in ${delay.toFixed(2)} s`,
      );
      this.#schedule(delay);
    }
  }
}
