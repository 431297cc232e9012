// Test helper: parses the Prometheus text exposition format with an independent parser
// (prom2javascript), so the tests check what a scraper would read, not prom-client's own objects.
import { getMetricsFromIterator, type PromMetrics } from "prom2javascript";

export async function parseExposition(text: string): Promise<PromMetrics> {
  return getMetricsFromIterator(text.split("\n")[Symbol.iterator]());
}
