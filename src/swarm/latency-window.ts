// Recent call latencies of one node, for the dispatcher's choices: which replica is fastest (p50),
// when to hedge (p95, "The Tail at Scale", Dean & Barroso 2013) and how long to wait before giving
// up (a multiple of p99). A fixed-size ring, so old conditions age out and a link that got slower
// or faster is followed within latencyWindowSamples calls — fixed timeouts (Petals, hivemind) are
// wrong on slow links and too lax on fast ones.

import { invariant } from "../common/assert.ts";
import { SampleRing } from "../common/sample-ring.ts";
import { latencySamplesMin, latencyWindowSamples } from "./constants.ts";

export class LatencyWindow {
  readonly #samples = new SampleRing(latencyWindowSamples);
  /** The window sorted, built on the first quantile after a record (the dispatcher asks several
   * quantiles of every replica per call; sorting once per sample instead of once per question). */
  #sorted: Float64Array | undefined;

  record(ms: number): void {
    invariant(ms >= 0 && Number.isFinite(ms), `latency sample ${ms}`);
    this.#samples.push(ms);
    this.#sorted = undefined;
  }

  get count(): number {
    return this.#samples.count;
  }

  /** True once enough samples are in for quantiles to be used. */
  get trusted(): boolean {
    return this.#samples.count >= latencySamplesMin;
  }

  /** The q-quantile (nearest rank) of the window; undefined when empty. */
  quantile(q: number): number | undefined {
    invariant(q >= 0 && q <= 1, `quantile ${q}`);
    if (this.#samples.count === 0) return undefined;
    if (this.#sorted === undefined) this.#sorted = this.#samples.sorted();
    const sorted = this.#sorted;
    const rank = Math.max(0, Math.ceil(q * sorted.length) - 1);
    return sorted[Math.min(sorted.length - 1, rank)];
  }
}
