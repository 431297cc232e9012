// Hot-path Prometheus metrics: label sets bound once, observations that cost a few array writes.
//
// prom-client (https://github.com/siimon/prom-client) is the swarm's exporter, but its recording
// path is built for convenience, not for one observation per expert call: every `observe(labels, v)`
// and `inc(labels, n)` validates the label object, builds a hash string from it, and a histogram
// looks its bucket up by the bound's number-as-string key. In the overhead benchmark's CPU profiles
// (bench/observe-overhead.ts --only on) that path was the largest single cost of metrics in the
// gateway and the nodes. So the per-call series are bound once here:
//   - BoundHistogram: a histogram registered in a prom-client Registry like any other metric (it
//     implements the registry's metric contract: name, help, type, get(), reset()); a child is one
//     label set with a Float64Array of bucket counts, its sum and count. The exposition is the same
//     text prom-client writes for its own histograms (cumulative `le` buckets, `+Inf`, _sum, _count).
//   - PendingCounter: children of a prom-client Counter that add to a plain number; the counter's
//     `collect` hook (run by prom-client before every scrape, push or JSON read) flushes the pending
//     amounts into it, so readers see exact totals.
// Both keep a bounded number of children (label sets): bind once at start-up, not per call.

import type client from "prom-client";
import { invariant } from "../common/assert.ts";

/** Label sets one bound metric may hold; a caller that binds per request instead of once trips it. */
export const boundChildrenMax = 1024;

/** One bound label set of a BoundHistogram. */
export class HistogramChild {
  readonly labels: Readonly<Record<string, string>>;
  readonly #bounds: Float64Array;
  /** Observations per bucket (not cumulative); the last slot is above every bound (+Inf). */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(labels: Readonly<Record<string, string>>, bounds: Float64Array) {
    this.labels = labels;
    this.#bounds = bounds;
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    if (!Number.isFinite(value))
      throw new TypeError(`histogram value must be finite; got ${value}`);
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > (bounds[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += value;
    this.count++;
  }
}

export interface BoundHistogramInit<L extends string> {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  /** Upper bounds, strictly increasing (+Inf is implicit). */
  readonly buckets: readonly number[];
  readonly registers?: readonly client.Registry[];
}

/** prom-client's metric value shape (what Registry.getMetricsAsString reads). */
interface MetricValue {
  readonly labels: Record<string, string | number>;
  /** The series' own labels, printed after `labels` and the registry's default labels. */
  readonly sharedLabels: Readonly<Record<string, string>>;
  readonly value: number;
  readonly metricName: string;
}

export class BoundHistogram<L extends string = string> {
  readonly name: string;
  readonly help: string;
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly labelNames: readonly L[];
  readonly #bounds: Float64Array;
  readonly #children = new Map<string, HistogramChild>();

  constructor(init: BoundHistogramInit<L>) {
    this.name = init.name;
    this.help = init.help;
    this.labelNames = init.labelNames;
    invariant(init.buckets.length > 0, "a histogram needs at least one bucket");
    for (let i = 1; i < init.buckets.length; i++) {
      invariant(
        (init.buckets[i] as number) > (init.buckets[i - 1] as number),
        () => `${init.name}: buckets must increase; got ${init.buckets.join(", ")}`,
      );
    }
    this.#bounds = Float64Array.from(init.buckets);
    for (const r of init.registers ?? []) r.registerMetric(this as unknown as client.Metric);
  }

  /** The upper bounds, +Inf excluded. */
  get buckets(): readonly number[] {
    return Array.from(this.#bounds);
  }

  /** The series of one label set, created on first use; keep it and call `observe` on it. */
  child(labels: Readonly<Record<L, string>>): HistogramChild {
    const values: Record<string, string> = {};
    for (const name of this.labelNames) {
      const v = labels[name];
      if (typeof v !== "string") throw new TypeError(`${this.name}: label "${name}" is missing`);
      values[name] = v;
    }
    const key = this.labelNames.map((n) => values[n]).join("\u0000");
    let c = this.#children.get(key);
    if (!c) {
      if (this.#children.size >= boundChildrenMax) {
        throw new RangeError(
          `${this.name}: more than ${boundChildrenMax} label sets; bind children once, not per call`,
        );
      }
      c = new HistogramChild(values, this.#bounds);
      this.#children.set(key, c);
    }
    return c;
  }

  /** Convenience (not for hot paths): `child(labels).observe(value)`. */
  observe(labels: Readonly<Record<L, string>>, value: number): void {
    this.child(labels).observe(value);
  }

  /** The metric in prom-client's shape, for its Registry (exposition, JSON, push). */
  async get(): Promise<{
    name: string;
    help: string;
    type: string;
    values: MetricValue[];
    aggregator: string;
  }> {
    const values: MetricValue[] = [];
    const bucket = `${this.name}_bucket`;
    // The same lines, labels in the same order, as prom-client prints for its own histograms.
    for (const c of this.#children.values()) {
      const shared = c.labels;
      let acc = 0;
      for (let i = 0; i < this.#bounds.length; i++) {
        acc += c.counts[i] as number;
        const le = this.#bounds[i] as number;
        values.push({ labels: { le }, sharedLabels: shared, value: acc, metricName: bucket });
      }
      values.push({
        labels: { le: "+Inf" },
        sharedLabels: shared,
        value: c.count,
        metricName: bucket,
      });
      values.push({
        labels: {},
        sharedLabels: shared,
        value: c.sum,
        metricName: `${this.name}_sum`,
      });
      values.push({
        labels: {},
        sharedLabels: shared,
        value: c.count,
        metricName: `${this.name}_count`,
      });
    }
    return {
      name: this.name,
      help: this.help,
      type: this.type,
      values,
      aggregator: this.aggregator,
    };
  }

  /** Zeroes every child (prom-client's Registry.resetMetrics calls it). */
  reset(): void {
    for (const c of this.#children.values()) {
      c.counts.fill(0);
      c.sum = 0;
      c.count = 0;
    }
  }
}

/** One bound label set of a PendingCounter: `inc` adds to a number flushed at the next scrape. */
export class CounterChild {
  readonly labels: Readonly<Record<string, string>>;
  pending = 0;

  constructor(labels: Readonly<Record<string, string>>) {
    this.labels = labels;
  }

  inc(amount = 1): void {
    if (!(amount >= 0)) throw new RangeError(`counter increment must be ≥ 0; got ${amount}`);
    this.pending += amount;
  }
}

/**
 * Bound children of a prom-client Counter. Create the counter with `collect: () => p.flush()` so
 * every read (scrape, push, JSON) first moves the pending amounts into it.
 */
export class PendingCounter<L extends string = string> {
  readonly #labelNames: readonly L[];
  readonly #children = new Map<string, CounterChild>();
  #counter: client.Counter<L> | undefined;

  constructor(labelNames: readonly L[]) {
    this.#labelNames = labelNames;
  }

  /** The counter the pending amounts flush into (set once, right after creating it). */
  attach(counter: client.Counter<L>): void {
    invariant(this.#counter === undefined, "a PendingCounter is attached once");
    this.#counter = counter;
  }

  child(labels: Readonly<Record<L, string>>): CounterChild {
    const key = this.#labelNames.map((n) => labels[n]).join("\u0000");
    let c = this.#children.get(key);
    if (!c) {
      if (this.#children.size >= boundChildrenMax) {
        throw new RangeError(
          `counter: more than ${boundChildrenMax} label sets; bind children once, not per call`,
        );
      }
      const values: Record<string, string> = {};
      for (const n of this.#labelNames) values[n] = labels[n];
      c = new CounterChild(values);
      this.#children.set(key, c);
    }
    return c;
  }

  /** Moves every pending amount into the counter. */
  flush(): void {
    const counter = this.#counter;
    invariant(counter, "PendingCounter.flush before attach");
    for (const c of this.#children.values()) {
      if (c.pending > 0) {
        counter.inc(c.labels as Partial<Record<L, string>>, c.pending);
        c.pending = 0;
      }
    }
  }
}
