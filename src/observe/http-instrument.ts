// Instruments a node:http request handler (e.g. the gateway's OpenAI API): a SERVER span per
// request, continuing the caller's trace when the request carries a W3C `traceparent` header, and
// the request count and latency metrics when the response finishes. The handler runs inside the
// span's context, so everything it awaits (the model's expert calls through TracedExpertHost)
// becomes the span's children.
//
// Route labels are bounded: a path made of lowercase segments (e.g. /v1/completions) is its own
// label, anything else is "other", so a client cannot grow the metric's series without bound.

import type { IncomingMessage, ServerResponse } from "node:http";
import { context, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { pathOf } from "./http-route.ts";
import type { SwarmMetrics } from "./metrics.ts";
import { extractTraceContext, type SwarmTracing } from "./tracing.ts";

const routePattern = /^(\/[a-z][a-z0-9_.-]{0,31}){1,4}$|^\/$/;

export function routeLabel(path: string): string {
  return routePattern.test(path) ? path : "other";
}

/** Health probes are counted but not traced: they would crowd real requests out of the trace buffer. */
export const untracedRoutes: readonly string[] = ["/healthz", "/readyz"];

export function instrumentHandler(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
  init: { tracing?: SwarmTracing; metrics?: SwarmMetrics; enabled?: () => boolean },
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    if (init.enabled && !init.enabled()) {
      handler(req, res);
      return;
    }
    const route = routeLabel(pathOf(req));
    const tracing = untracedRoutes.includes(route) ? undefined : init.tracing;
    const t0 = performance.now();
    const header = req.headers.traceparent;
    const parent = extractTraceContext(typeof header === "string" ? header : undefined);
    const span = tracing?.startSpan(`${req.method ?? "?"} ${route}`, {
      parent,
      kind: SpanKind.SERVER,
      attributes: { "http.request.method": req.method ?? "", "url.path": route },
    });
    res.once("close", () => {
      const status = res.writableFinished ? res.statusCode : 499;
      init.metrics?.recordRequest(route, status, (performance.now() - t0) / 1000);
      if (span) {
        span.setAttribute("http.response.status_code", status);
        if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
        span.end();
      }
    });
    if (span) context.with(trace.setSpan(parent, span), () => handler(req, res));
    else handler(req, res);
  };
}
