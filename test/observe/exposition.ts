// Test helper: parses the Prometheus text exposition format with an independent parser
// (prom2javascript), so the tests check what a scraper would read, not prom-client's own objects.
//
// prom2javascript 0.2 accepts finite numbers and +Inf but not the format's "NaN", which
// prom-client's runtime gauges show before their first sample (e.g. the event-loop lag mean).
// Those lines are left out before parsing; a NaN in one of this project's moe_swarm_* metrics is
// an error instead.
import { getMetricsFromIterator, type PromMetrics } from "prom2javascript";

export async function parseExposition(text: string): Promise<PromMetrics> {
  const lines = text.split("\n").filter((line) => {
    if (!/ NaN$/.test(line)) return true;
    if (line.startsWith("moe_swarm_")) throw new Error(`NaN sample in a project metric: ${line}`);
    return false;
  });
  return getMetricsFromIterator(lines[Symbol.iterator]());
}
