import assert from "node:assert/strict";
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { createServer, type Server } from "node:http";
import { type AddressInfo, connect } from "node:net";
import { createInterface } from "node:readline";
import type { Readable, Writable } from "node:stream";
import { after, describe, it } from "node:test";
import { context, type Span, trace } from "@opentelemetry/api";
import { routeAll } from "../../src/observe/http-route.ts";
import { otlpTraceRoute } from "../../src/observe/otlp-receiver.ts";
import { TraceRingBuffer } from "../../src/observe/trace-buffer.ts";
import {
  extractTraceContext,
  injectTraceparent,
  isTraceparent,
  SwarmTracing,
  traceparentOf,
} from "../../src/observe/tracing.ts";

const servers: Server[] = [];
const children: ChildProcessByStdio<Writable, Readable, null>[] = [];
after(() => {
  for (const s of servers) s.close();
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

async function receiver(buffer: TraceRingBuffer): Promise<string> {
  const server = createServer(routeAll([otlpTraceRoute(buffer)]));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`;
}

describe("trace context propagation", () => {
  it("injects and extracts traceparent, and starts a new trace on malformed input", async () => {
    const buffer = new TraceRingBuffer(64);
    const tracing = new SwarmTracing({
      serviceName: "gateway",
      ringBuffer: buffer,
      otlpEndpoint: null,
    });
    await tracing.withSpan("outer", async (span) => {
      const tp = injectTraceparent();
      assert.ok(tp && isTraceparent(tp));
      assert.equal(tp, traceparentOf(span));
      assert.ok(tp.includes(span.spanContext().traceId));
      const ctx = extractTraceContext(tp);
      assert.equal(trace.getSpanContext(ctx)?.spanId, span.spanContext().spanId);
      assert.equal(trace.getSpanContext(ctx)?.isRemote, true);
    });
    for (const bad of [
      undefined,
      "",
      "garbage",
      "00-00000000000000000000000000000000-0000000000000001-01",
      "00-0123456789abcdef0123456789abcdef-0000000000000000-01",
      "01-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
      "00-0123456789ABCDEF0123456789abcdef-0123456789abcdef-01",
    ]) {
      assert.equal(trace.getSpanContext(extractTraceContext(bad)), undefined, String(bad));
    }
    const fresh = tracing.startServerSpan("server", "not-a-traceparent");
    fresh.end();
    assert.equal(buffer.trace(fresh.spanContext().traceId)?.spanCount, 1);
    assert.equal(buffer.trace(fresh.spanContext().traceId)?.roots[0]?.span.parentSpanId, "");
  });

  it("records an exception thrown inside withSpan as the span's error", async () => {
    const buffer = new TraceRingBuffer(8);
    const tracing = new SwarmTracing({ serviceName: "g", ringBuffer: buffer, otlpEndpoint: null });
    await assert.rejects(
      tracing.withSpan("fails", () => {
        throw new Error("boom");
      }),
      /boom/,
    );
    const t = buffer.traces()[0];
    assert.equal(t?.error, true);
    assert.match(t?.roots[0]?.span.statusMessage ?? "", /boom/);
  });

  it("samples a fraction of new traces and follows the caller's decision for remote parents", () => {
    const buffer = new TraceRingBuffer(4096);
    const none = new SwarmTracing({
      serviceName: "g",
      ringBuffer: buffer,
      otlpEndpoint: null,
      sampleRatio: 0,
    });
    for (let i = 0; i < 100; i++) none.startSpan("root").end();
    assert.equal(buffer.added, 0);
    // A caller that sampled its trace: the callee records even at ratio 0.
    const sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    none.startServerSpan("server", sampled).end();
    assert.equal(buffer.added, 1);
    const half = new SwarmTracing({
      serviceName: "g",
      ringBuffer: buffer,
      otlpEndpoint: null,
      sampleRatio: 0.5,
    });
    for (let i = 0; i < 1000; i++) half.startSpan("root").end();
    // Trace ids are random, so the count varies; 1000 draws at p = 0.5 stay within ±150 of 500
    // except with probability < 1e-20.
    assert.ok(Math.abs(buffer.added - 1 - 500) < 150, `${buffer.added - 1} of 1000 sampled`);
    assert.throws(() => new SwarmTracing({ serviceName: "g", sampleRatio: 2 }), RangeError);
  });

  it("keeps at most its capacity of spans, evicting the oldest", () => {
    const buffer = new TraceRingBuffer(10);
    const tracing = new SwarmTracing({ serviceName: "g", ringBuffer: buffer, otlpEndpoint: null });
    for (let i = 0; i < 25; i++) tracing.startSpan(`s${i}`).end();
    assert.equal(buffer.size, 10);
    assert.equal(buffer.added, 25);
    const names = buffer.traces(50).map((t) => t.rootName);
    assert.equal(names.length, 10);
    assert.equal(names[0], "s24");
    assert.equal(names.at(-1), "s15");
  });
});

describe("OTLP/HTTP receiver", () => {
  it("rejects bad bodies with 4xx and keeps serving", async () => {
    const buffer = new TraceRingBuffer(8);
    const url = await receiver(buffer);
    const post = (body: string, type = "application/json") =>
      fetch(url, { method: "POST", body, headers: { "content-type": type } });
    assert.equal((await post("{")).status, 400);
    assert.equal(
      (await post('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"}]}]}]}')).status,
      400,
    );
    assert.equal((await post("\u0000", "application/x-protobuf")).status, 415);
    assert.equal((await fetch(url)).status, 405);
    assert.equal((await post("x".repeat(5 * 1024 * 1024))).status, 413);
    const ok = await post(
      JSON.stringify({
        resourceSpans: [
          {
            resource: { attributes: [{ key: "service.name", value: { stringValue: "n1" } }] },
            scopeSpans: [
              {
                spans: [
                  {
                    traceId: "0123456789abcdef0123456789abcdef",
                    spanId: "0123456789abcdef",
                    name: "x",
                    kind: 2,
                    startTimeUnixNano: "1700000000000000000",
                    endTimeUnixNano: "1700000000002500000",
                    attributes: [{ key: "k", value: { intValue: "7" } }],
                  },
                ],
              },
            ],
          },
        ],
      }),
    );
    assert.equal(ok.status, 200);
    const span = buffer.spansOf("0123456789abcdef0123456789abcdef")[0];
    assert.equal(span?.service, "n1");
    assert.equal(span?.kind, "server");
    assert.equal(span?.durationMs, 2.5);
    assert.equal(span?.attributes.k, 7);
  });
});

describe("a trace across two processes", () => {
  it("carries one trace id from the gateway process to an expert process over a real socket, with fan-out and hedge links", async () => {
    const buffer = new TraceRingBuffer();
    const otlpUrl = await receiver(buffer);
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "test/observe/fixtures/trace-child.ts"],
      {
        env: { ...process.env, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: otlpUrl },
        stdio: ["pipe", "pipe", "inherit"],
      },
    );
    children.push(child);
    const stdout = createInterface({ input: child.stdout });
    const port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("child did not start in 20 s")), 20_000);
      stdout.on("line", (line) => {
        const m = /^PORT (\d+)$/.exec(line);
        if (m) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      });
      child.on("exit", (code) => reject(new Error(`child exited with ${code}`)));
    });
    const socket = connect(port, "127.0.0.1");
    await new Promise<void>((resolve) => socket.once("connect", resolve));
    const replies = createInterface({ input: socket });
    // Replies come back in the order the child's flushes settle: matched by expert.
    const pending = new Map<
      number,
      (v: { traceId: string; spanId: string; result: number }) => void
    >();
    replies.on("line", (line) => {
      const reply = JSON.parse(line) as {
        expert: number;
        traceId: string;
        spanId: string;
        result: number;
      };
      const resolve = pending.get(reply.expert);
      pending.delete(reply.expert);
      resolve?.(reply);
    });
    const call = (span: Span, expert: number, values: number[]) =>
      new Promise<{ traceId: string; spanId: string; result: number }>((resolve) => {
        pending.set(expert, resolve);
        socket.write(`${JSON.stringify({ traceparent: traceparentOf(span), expert, values })}\n`);
      });

    const gateway = new SwarmTracing({
      serviceName: "gateway",
      ringBuffer: buffer,
      otlpEndpoint: null,
    });
    let request: Span | undefined;
    let fanned: Span[] = [];
    let hedge: Span | undefined;
    const remote: { traceId: string; spanId: string; result: number }[] = [];
    await gateway.withSpan("gateway.request", async (root) => {
      request = root;
      fanned = gateway.startFanOut(root, [
        { name: "expert.call", attributes: { "moe.expert": "L0.E1" } },
        { name: "expert.call", attributes: { "moe.expert": "L0.E5" } },
      ]);
      remote.push(...(await Promise.all(fanned.map((s, i) => call(s, i, [1, 2, 3])))));
      const primary = fanned[0] as Span;
      hedge = gateway.startHedge(
        trace.setSpan(context.active(), root),
        primary,
        "expert.call.hedge",
      );
      remote.push(await call(hedge, 0, [4]));
      hedge.end();
      for (const s of fanned) s.end();
      gateway.startJoin(root, "moe.combine", fanned).end();
    });
    socket.end();
    child.stdin.end();
    assert.ok(request && hedge);
    assert.deepEqual(
      remote.map((r) => r.result),
      [14, 14, 16],
    );

    const traceId = request.spanContext().traceId;
    for (const r of remote)
      assert.equal(r.traceId, traceId, "the expert process continued the trace");
    const t = buffer.trace(traceId);
    assert.ok(t);
    assert.deepEqual(t.services, ["expert-node", "gateway"]);
    assert.equal(t.spanCount, 1 + 2 + 1 + 1 + 3); // request, 2 calls, hedge, combine, 3 remote
    assert.equal(t.roots.length, 1);
    assert.equal(t.rootName, "gateway.request");
    // Each remote span is the child of the call span whose traceparent it received.
    const spans = buffer.spansOf(traceId);
    const parents = [fanned[0], fanned[1], hedge].map((s) => s?.spanContext().spanId);
    remote.forEach((r, i) => {
      const stored = spans.find((s) => s.spanId === r.spanId);
      assert.equal(stored?.service, "expert-node");
      assert.equal(stored?.kind, "server");
      assert.equal(stored?.parentSpanId, parents[i]);
      assert.equal(stored?.attributes["moe.region"], undefined); // resource, not span attribute
    });
    const combine = spans.find((s) => s.name === "moe.combine");
    assert.deepEqual(
      combine?.links.map((l) => l.spanId),
      fanned.map((s) => s.spanContext().spanId),
    );
    const hedgeStored = spans.find((s) => s.name === "expert.call.hedge");
    assert.equal(hedgeStored?.links[0]?.spanId, fanned[0]?.spanContext().spanId);
    assert.equal(hedgeStored?.links[0]?.attributes["moe.link"], "hedge_of");
    // The tree: request → call → remote forward.
    const callNode = t.roots[0]?.children.find((n) => n.span.spanId === parents[0]);
    assert.equal(callNode?.children[0]?.span.name, "expert.forward");
    await new Promise<void>((resolve) => child.once("exit", () => resolve()));
  });
});
