// Test helper: parses the Prometheus text exposition format with an independent parser
// (prom2javascript), so the tests check what a scraper would read, not prom-client's own objects.
//
// prom2javascript 0.2 accepts finite numbers and +Inf but not the format's "NaN", which
// prom-client's runtime gauges show before their first sample (e.g. the event-loop lag mean).
// Those lines are left out before parsing (prom-client's own spelling "Nan", which reaches a
// Pushgateway, is read as NaN like Prometheus' case-insensitive float parser does). A NaN in one
// of this project's moe_swarm_* metrics is an error, except the gradient fidelity gauge, whose
// NaN is its documented "no data" (nothing compresses gradients yet).
import { getMetricsFromIterator, type PromMetrics } from "prom2javascript";

const noDataAllowed = /^moe_swarm_gradient_entanglement_fidelity_ratio[{ ]/;

export async function parseExposition(text: string): Promise<PromMetrics> {
  const lines = text.split("\n").filter((line) => {
    if (!/ Na[Nn]$/.test(line)) return true;
    if (line.startsWith("moe_swarm_") && !noDataAllowed.test(line))
      throw new Error(`NaN sample in a project metric: ${line}`);
    return false;
  });
  return getMetricsFromIterator(lines[Symbol.iterator]());
}
