// An OTLP/HTTP trace receiver (`POST /v1/traces`, JSON encoding — the OpenTelemetry Protocol,
// https://opentelemetry.io/docs/specs/otlp/#otlphttp) that stores received spans in the
// dashboard's ring buffer. With it the gateway is the collector of the local swarm: expert nodes
// export their spans with the standard OTLP exporter to the gateway, and one trace shows the
// gateway's and the experts' spans together. A real collector (Jaeger, Tempo, the OTel Collector)
// takes the same requests.
//
// The body is untrusted: size-capped, parsed with a schema, ids checked as hex of the right
// length; a bad request answers 400 with the reason and never reaches the buffer.

import type { IncomingMessage } from "node:http";
import { z } from "zod";
import { otlpBodyBytesMax, otlpSpansPerRequestMax } from "./constants.ts";
import { type HttpRoute, pathOf, sendJson, sendText } from "./http-route.ts";
import {
  boundedAttributes,
  type StoredAttributeValue,
  type StoredSpan,
  type TraceRingBuffer,
} from "./trace-buffer.ts";

export const otlpTracesPath = "/v1/traces";

const hex = (bytes: number) =>
  z.string().regex(new RegExp(`^[0-9a-f]{${bytes * 2}}$`), `${bytes * 2} lowercase hex digits`);
const nanos = z.union([z.string().regex(/^\d{1,20}$/), z.number().int().min(0)]);

type AnyValue = {
  stringValue?: string | undefined;
  boolValue?: boolean | undefined;
  intValue?: string | number | undefined;
  doubleValue?: number | undefined;
  arrayValue?: { values?: AnyValue[] | undefined } | undefined;
};
const anyValue: z.ZodType<AnyValue> = z.lazy(() =>
  z.object({
    stringValue: z.string().optional(),
    boolValue: z.boolean().optional(),
    intValue: z.union([z.string().regex(/^-?\d{1,20}$/), z.number().int()]).optional(),
    doubleValue: z.number().optional(),
    arrayValue: z.object({ values: z.array(anyValue).max(64).optional() }).optional(),
  }),
);
const keyValues = z
  .array(z.object({ key: z.string().max(256), value: anyValue.optional() }))
  .max(256);

const otlpSpan = z.object({
  traceId: hex(16),
  spanId: hex(8),
  parentSpanId: z.union([hex(8), z.literal("")]).optional(),
  name: z.string().max(1024),
  kind: z.number().int().min(0).max(5).optional(),
  startTimeUnixNano: nanos,
  endTimeUnixNano: nanos,
  attributes: keyValues.optional(),
  links: z
    .array(z.object({ traceId: hex(16), spanId: hex(8), attributes: keyValues.optional() }))
    .max(128)
    .optional(),
  status: z
    .object({ code: z.number().int().min(0).max(2).optional(), message: z.string().optional() })
    .optional(),
});

export const exportTraceServiceRequest = z.object({
  resourceSpans: z
    .array(
      z.object({
        resource: z.object({ attributes: keyValues.optional() }).optional(),
        scopeSpans: z.array(z.object({ spans: z.array(otlpSpan).optional() })).optional(),
      }),
    )
    .optional(),
});

function scalar(v: AnyValue | undefined): StoredAttributeValue | undefined {
  if (!v) return undefined;
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue?.values) {
    return v.arrayValue.values.map((x) => String(scalar(x) ?? "")).join(",");
  }
  return undefined;
}

function attributesOf(
  kv: z.output<typeof keyValues> | undefined,
): Record<string, StoredAttributeValue> {
  const out: Record<string, StoredAttributeValue> = {};
  for (const { key, value } of kv ?? []) {
    const s = scalar(value);
    if (s !== undefined) out[key] = s;
  }
  return boundedAttributes(out);
}

function nanosToMs(n: string | number): number {
  const big = BigInt(n);
  return Number(big / 1000n) / 1000;
}

const kinds: StoredSpan["kind"][] = [
  "internal",
  "internal",
  "server",
  "client",
  "producer",
  "consumer",
];

/** Converts a validated OTLP request to stored spans. */
export function spansFromOtlp(request: z.output<typeof exportTraceServiceRequest>): StoredSpan[] {
  const out: StoredSpan[] = [];
  for (const rs of request.resourceSpans ?? []) {
    const resource = attributesOf(rs.resource?.attributes);
    const service =
      typeof resource["service.name"] === "string" ? resource["service.name"] : "unknown";
    for (const ss of rs.scopeSpans ?? []) {
      for (const s of ss.spans ?? []) {
        const startMs = nanosToMs(s.startTimeUnixNano);
        const endMs = nanosToMs(s.endTimeUnixNano);
        const code = s.status?.code ?? 0;
        out.push({
          traceId: s.traceId,
          spanId: s.spanId,
          parentSpanId: s.parentSpanId ?? "",
          name: s.name,
          service,
          kind: kinds[s.kind ?? 0] ?? "internal",
          startMs,
          durationMs: Math.max(0, endMs - startMs),
          status: code === 2 ? "error" : code === 1 ? "ok" : "unset",
          statusMessage: s.status?.message ?? "",
          attributes: attributesOf(s.attributes),
          links: (s.links ?? []).map((l) => ({
            traceId: l.traceId,
            spanId: l.spanId,
            attributes: attributesOf(l.attributes),
          })),
        });
      }
    }
  }
  return out;
}

export class OtlpRequestError extends Error {
  readonly status: number;
  constructor(status: number, message: string) {
    super(message);
    this.name = "OtlpRequestError";
    this.status = status;
  }
}

async function readBody(req: IncomingMessage, bytesMax: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > bytesMax) throw new OtlpRequestError(413, `body over ${bytesMax} bytes`);
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    total += (chunk as Buffer).length;
    if (total > bytesMax) throw new OtlpRequestError(413, `body over ${bytesMax} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** Parses and validates one OTLP/HTTP JSON body. Throws OtlpRequestError on a bad one. */
export function parseOtlpJson(body: Buffer): StoredSpan[] {
  let json: unknown;
  try {
    json = JSON.parse(body.toString("utf8"));
  } catch {
    throw new OtlpRequestError(400, "body is not JSON");
  }
  const parsed = exportTraceServiceRequest.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new OtlpRequestError(
      400,
      `invalid OTLP request at ${issue?.path.join(".")}: ${issue?.message}`,
    );
  }
  const spans = spansFromOtlp(parsed.data);
  if (spans.length > otlpSpansPerRequestMax) {
    throw new OtlpRequestError(413, `more than ${otlpSpansPerRequestMax} spans in one request`);
  }
  return spans;
}

/** `POST /v1/traces` (OTLP/HTTP JSON) into `buffer`. */
export function otlpTraceRoute(buffer: TraceRingBuffer, path = otlpTracesPath): HttpRoute {
  return (req, res) => {
    if (pathOf(req) !== path) return false;
    if (req.method !== "POST") {
      res.setHeader("allow", "POST");
      sendText(res, 405, `${path} takes POST of OTLP/HTTP JSON\n`);
      return true;
    }
    const type = String(req.headers["content-type"] ?? "");
    if (!type.startsWith("application/json")) {
      req.resume();
      sendText(res, 415, "only OTLP/HTTP JSON (content-type application/json) is accepted\n");
      return true;
    }
    readBody(req, otlpBodyBytesMax)
      .then(parseOtlpJson)
      .then(
        (spans) => {
          for (const s of spans) buffer.add(s);
          sendJson(res, 200, { partialSuccess: {} });
        },
        (err: unknown) => {
          const status = err instanceof OtlpRequestError ? err.status : 400;
          // After an oversized body the connection is closed rather than drained.
          if (status === 413) res.setHeader("connection", "close");
          sendText(res, status, `${err instanceof Error ? err.message : String(err)}\n`);
        },
      );
    return true;
  };
}
