// The shape in which this layer hands HTTP routes to whichever server mounts them (the gateway of
// issue #5, an expert node, or the standalone dashboard server): a function that either answers a
// request and returns true, or leaves it alone and returns false. No framework, plain node:http.

import type { IncomingMessage, ServerResponse } from "node:http";

export type HttpRoute = (req: IncomingMessage, res: ServerResponse) => boolean;

/** Tries each route in order; answers 404 when none takes the request. */
export function routeAll(
  routes: readonly HttpRoute[],
): (req: IncomingMessage, res: ServerResponse) => void {
  return (req, res) => {
    for (const route of routes) if (route(req, res)) return;
    sendText(res, 404, `no route for ${req.method ?? "?"} ${pathOf(req)}\n`);
  };
}

/** The request's path without the query string. */
export function pathOf(req: IncomingMessage): string {
  const url = req.url ?? "/";
  const q = url.indexOf("?");
  return q === -1 ? url : url.slice(0, q);
}

export function sendText(
  res: ServerResponse,
  status: number,
  body: string,
  type = "text/plain; charset=utf-8",
): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
  res.end(body);
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  sendText(res, status, JSON.stringify(value), "application/json; charset=utf-8");
}
