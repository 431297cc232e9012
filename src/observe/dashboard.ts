// The dashboard's server side: the page (web/index.html, dashboard.js, dashboard.css, served
// from memory, no CDN, strict Content-Security-Policy), its JSON API, the live feed and the
// Prometheus and OTLP endpoints, as routes any node:http server mounts (the gateway passes
// `routes()` as its extra routes and `handleUpgrade` to its "upgrade" event), or as a server of
// its own (`serveDashboard`).
//
//   GET  /                 the page            GET  /api/snapshot     DashboardSnapshot (JSON)
//   GET  /dashboard.js     its script          GET  /api/traces       recent traces with span trees
//   GET  /dashboard.css    its style           GET  /api/traces/<id>  one trace
//   GET  /metrics          Prometheus          POST /v1/traces        OTLP/HTTP JSON receiver
//   WS   /live             live feed (one message per tick, backpressure per client)

import { readFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import { tracesListedMax } from "./constants.ts";
import type { DashboardSnapshot } from "./dashboard-state.ts";
import { type HttpRoute, pathOf, sendJson, sendText } from "./http-route.ts";
import { LiveFeed, type LiveFeedInit } from "./live-feed.ts";
import type { SwarmMetrics } from "./metrics.ts";
import { metricsRoute } from "./metrics-http.ts";
import { otlpTraceRoute } from "./otlp-receiver.ts";
import type { TraceRingBuffer } from "./trace-buffer.ts";

const webDir = new URL("../../web/", import.meta.url);

const assets: Record<string, { file: string; type: string }> = {
  "/": { file: "index.html", type: "text/html; charset=utf-8" },
  "/index.html": { file: "index.html", type: "text/html; charset=utf-8" },
  "/dashboard.js": { file: "dashboard.js", type: "text/javascript; charset=utf-8" },
  "/dashboard.css": { file: "dashboard.css", type: "text/css; charset=utf-8" },
};

/** Only this origin's scripts, styles, images and sockets; nothing inline, nothing remote. */
const contentSecurityPolicy =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const traceIdPattern = /^[0-9a-f]{32}$/;

export interface DashboardInit {
  readonly metrics: SwarmMetrics;
  readonly traces: TraceRingBuffer;
  /** Live-feed limits (interval, per-client buffer, …); the snapshot source is the metrics. */
  readonly feed?: Omit<LiveFeedInit<DashboardSnapshot>, "snapshot" | "subscribe">;
}

export class Dashboard {
  readonly metrics: SwarmMetrics;
  readonly traces: TraceRingBuffer;
  readonly feed: LiveFeed<DashboardSnapshot>;
  readonly #files = new Map<string, Buffer>();

  constructor(init: DashboardInit) {
    this.metrics = init.metrics;
    this.traces = init.traces;
    for (const { file } of Object.values(assets)) {
      if (!this.#files.has(file)) this.#files.set(file, readFileSync(new URL(file, webDir)));
    }
    this.feed = new LiveFeed<DashboardSnapshot>({
      ...init.feed,
      snapshot: () => init.metrics.snapshot(),
      subscribe: (listener) => init.metrics.onEvent(listener),
    });
  }

  /** The HTTP routes, to mount on a server (e.g. the gateway's `extraRoutes`). */
  routes(): HttpRoute[] {
    return [
      (req, res) => this.#asset(req, res),
      (req, res) => this.#api(req, res),
      metricsRoute(this.metrics),
      otlpTraceRoute(this.traces),
    ];
  }

  /** Mount on the server's "upgrade" event; false when the path is not the live feed's. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
    return this.feed.handleUpgrade(req, socket, head);
  }

  close(): void {
    this.feed.close();
  }

  #asset(req: IncomingMessage, res: ServerResponse): boolean {
    const asset = assets[pathOf(req)];
    if (!asset || (req.method !== "GET" && req.method !== "HEAD")) return false;
    const body = this.#files.get(asset.file);
    if (!body) return false;
    res.writeHead(200, {
      "content-type": asset.type,
      "content-length": body.length,
      "cache-control": "no-cache",
      "content-security-policy": contentSecurityPolicy,
      "x-content-type-options": "nosniff",
    });
    res.end(req.method === "HEAD" ? undefined : body);
    return true;
  }

  #api(req: IncomingMessage, res: ServerResponse): boolean {
    const path = pathOf(req);
    if (!path.startsWith("/api/")) return false;
    if (req.method !== "GET") {
      res.setHeader("allow", "GET");
      sendText(res, 405, `${path} answers GET only\n`);
      return true;
    }
    if (path === "/api/snapshot") {
      sendJson(res, 200, this.metrics.snapshot());
      return true;
    }
    if (path === "/api/traces") {
      const limit = Number(new URL(req.url ?? "/", "http://x").searchParams.get("limit") ?? 20);
      const n = Number.isInteger(limit) && limit > 0 ? Math.min(limit, tracesListedMax) : 20;
      sendJson(res, 200, { traces: this.traces.traces(n), spansKept: this.traces.size });
      return true;
    }
    if (path.startsWith("/api/traces/")) {
      const id = path.slice("/api/traces/".length);
      if (!traceIdPattern.test(id)) {
        sendText(res, 400, "a trace id is 32 lowercase hex digits\n");
        return true;
      }
      const t = this.traces.trace(id);
      if (t) sendJson(res, 200, t);
      else sendText(res, 404, `trace ${id} is not (or no longer) in the buffer\n`);
      return true;
    }
    sendText(res, 404, `no API route ${path}\n`);
    return true;
  }
}

export interface ServedDashboard {
  readonly server: Server;
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Serves the dashboard on its own HTTP server (loopback by default). `fallback` gets every request
 * the dashboard does not take (e.g. the gateway's API handler); without it they get 404.
 */
export async function serveDashboard(
  dashboard: Dashboard,
  options: {
    host?: string;
    port?: number;
    fallback?: (req: IncomingMessage, res: ServerResponse) => void;
  } = {},
): Promise<ServedDashboard> {
  const routes = dashboard.routes();
  const server = createServer((req, res) => {
    for (const route of routes) if (route(req, res)) return;
    if (options.fallback) options.fallback(req, res);
    else sendText(res, 404, `no route for ${req.method ?? "?"} ${pathOf(req)}\n`);
  });
  server.on("upgrade", (req, socket, head) => {
    if (!dashboard.handleUpgrade(req, socket, head)) socket.destroy();
  });
  server.on("clientError", (_err, socket) => socket.destroy());
  const host = options.host ?? "127.0.0.1";
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port ?? 0, host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    url: `http://${host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        dashboard.close();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
