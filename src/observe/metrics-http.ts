// `GET /metrics` for node:http: the process's registry in the Prometheus text exposition format
// (https://prometheus.io/docs/instrumenting/exposition_formats/). Scrapes are cheap and
// read-only; a failure to collect answers 500 and never throws into the server.

import type { HttpRoute } from "./http-route.ts";
import { pathOf, sendText } from "./http-route.ts";
import type { SwarmMetrics } from "./metrics.ts";

export const metricsPath = "/metrics";

export function metricsRoute(metrics: SwarmMetrics, path = metricsPath): HttpRoute {
  return (req, res) => {
    if (pathOf(req) !== path) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("allow", "GET, HEAD");
      sendText(res, 405, `${path} answers GET only\n`);
      return true;
    }
    metrics.exposition().then(
      (text) => sendText(res, 200, req.method === "HEAD" ? "" : text, metrics.contentType),
      (err: unknown) => sendText(res, 500, `metrics collection failed: ${String(err)}\n`),
    );
    return true;
  };
}
