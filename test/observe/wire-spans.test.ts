// Node spans in reply frames (issue #8): a real ExpertNode with the observability hook on
// loopback, called through NodeClient.
//   - a sampled call from a client that collects spans gets the node's span back in the reply:
//     right trace, parent, name, experts and tokens, error status for an error reply; the node
//     makes no OpenTelemetry span for it (nothing in its own tracer);
//   - an unsampled call, or one without a traceparent, costs the node no span at all;
//   - a client that does not collect spans leaves the node on its own OTLP-side span;
//   - the gateway's SwarmTracing turns the records into spans of the node's service in its ring
//     buffer, through the DispatchObserver's nodeSpans, and in its OTLP export;
//   - a request frame with a malformed span section gets an error reply; the node keeps serving.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { loadConfig } from "../../src/config/load.ts";
import type { ExpertId } from "../../src/model/expert.ts";
import { metricsDispatchObserver } from "../../src/observe/dispatch-observer.ts";
import { expertNodeRequestHook } from "../../src/observe/expert-node-hook.ts";
import { routeAll } from "../../src/observe/http-route.ts";
import { SwarmMetrics } from "../../src/observe/metrics.ts";
import { otlpTraceRoute } from "../../src/observe/otlp-receiver.ts";
import { TraceRingBuffer } from "../../src/observe/trace-buffer.ts";
import { SwarmTracing } from "../../src/observe/tracing.ts";
import { spanSinkOf } from "../../src/swarm/dispatch-observer.ts";
import { RemoteCallError, WireErrorCode } from "../../src/swarm/errors.ts";
import { ExpertNode } from "../../src/swarm/expert-node.ts";
import { encodeFrame, FrameKind, Op } from "../../src/swarm/frame.ts";
import {
  spanRecordBytes,
  type WireSpan,
  WireSpanName,
  WireSpanStatus,
} from "../../src/swarm/frame-spans.ts";
import { type NodeAddress, NodeClient } from "../../src/swarm/node-client.ts";
import { directLinks } from "../../src/swarm/region-links.ts";
import { RawConnection } from "../swarm/fixtures/raw-socket.ts";
import { TinyFfnHost } from "../swarm/fixtures/tiny-ffn.ts";

const d = 4;
const experts: ExpertId[] = [
  { layer: 1, expert: 2 },
  { layer: 1, expert: 5 },
];
const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
const parent = "00f067aa0ba902b7";
const sampled = `00-${traceId}-${parent}-01`;
const unsampled = `00-${traceId}-${parent}-00`;

describe("node spans in reply frames", () => {
  let node: ExpertNode;
  let nodeTracing: SwarmTracing;
  const nodeBuffer = new TraceRingBuffer(64);
  let address: NodeAddress;
  const clients: NodeClient[] = [];

  before(async () => {
    nodeTracing = new SwarmTracing({
      serviceName: "AMS-0",
      ringBuffer: nodeBuffer,
      otlpEndpoint: null,
      activeContext: false,
    });
    node = new ExpertNode({
      nodeId: "AMS-0",
      region: "AMS",
      host: new TinyFfnHost(d, 8, experts, 7),
      experts,
      dModel: d,
      links: directLinks,
      onRequest: expertNodeRequestHook({ nodeId: "AMS-0", tracing: nodeTracing }),
    });
    const { port } = await node.listen();
    address = { nodeId: "AMS-0", region: "AMS", host: "127.0.0.1", port };
  });
  after(async () => {
    for (const c of clients) c.close();
    await node.close();
    await nodeTracing.shutdown();
  });

  const collectingClient = (got: WireSpan[][]) => {
    const c = new NodeClient(address, "ORD", directLinks, (spans) => got.push([...spans]));
    clients.push(c);
    return c;
  };
  const forward = (c: NodeClient, traceparent: string | undefined, ids = experts) =>
    c.call({
      op: Op.forward,
      ids,
      tensors: ids.map(() => ({ dims: [3, d], data: new Float32Array(3 * d).fill(0.5) })),
      timeoutMs: 5000,
      ...(traceparent ? { ctx: { traceparent } } : {}),
    });

  it("a sampled call gets the node's span in its reply; the node records no SDK span", async () => {
    const got: WireSpan[][] = [];
    const c = collectingClient(got);
    const before = nodeBuffer.added;
    const reply = await forward(c, sampled);
    assert.equal(reply.tensors.length, 2);
    assert.equal(got.length, 1, "delivered before the call resolved");
    const [s] = got[0] as [WireSpan];
    assert.equal(s.traceId, traceId);
    assert.equal(s.parentSpanId, parent);
    assert.match(s.spanId, /^[0-9a-f]{16}$/);
    assert.notEqual(s.spanId, parent);
    assert.equal(s.name, WireSpanName.nodeForward);
    assert.equal(s.status, WireSpanStatus.unset);
    assert.deepEqual([s.layer, s.expert, s.experts, s.tokens], [1, 2, 2, 6]);
    const nowSeconds = Date.now() / 1000;
    assert.ok(Math.abs(s.startSeconds - nowSeconds) < 60, "epoch start time");
    assert.equal(nodeBuffer.added, before, "no OpenTelemetry span on the node");

    // An error reply carries the span too, with error status.
    await assert.rejects(
      forward(c, sampled, [{ layer: 9, expert: 9 }]),
      (e: unknown) => e instanceof RemoteCallError && e.code === WireErrorCode.unknownExpert,
    );
    assert.equal(got.length, 2);
    assert.equal(got[1]?.[0]?.status, WireSpanStatus.error);
  });

  it("unsampled or untraced calls cost the node no span", async () => {
    const got: WireSpan[][] = [];
    const c = collectingClient(got);
    const before = nodeBuffer.added;
    await forward(c, unsampled);
    await forward(c, undefined);
    assert.equal(got.length, 0);
    assert.equal(nodeBuffer.added, before);
  });

  it("a client that does not collect spans leaves the node on its own (OTLP-side) span", async () => {
    const c = new NodeClient(address, "ORD", directLinks);
    clients.push(c);
    const before = nodeBuffer.added;
    const reply = await forward(c, sampled);
    assert.deepEqual(reply.spans, []);
    assert.equal(nodeBuffer.added, before + 1);
    assert.equal(nodeBuffer.spansOf(traceId).at(-1)?.parentSpanId, parent);
  });

  it("the gateway records them as spans of the node's service, under the caller's span", async () => {
    const { config } = loadConfig();
    const buffer = new TraceRingBuffer(64);
    const tracing = new SwarmTracing({
      serviceName: "gateway",
      ringBuffer: buffer,
      otlpEndpoint: null,
      activeContext: false,
    });
    const observer = metricsDispatchObserver({
      tracing,
      metrics: new SwarmMetrics({ config, process: "gateway", defaultMetrics: false }),
      region: "ORD",
    });
    const c = new NodeClient(address, "ORD", directLinks, spanSinkOf(observer));
    clients.push(c);
    await forward(c, sampled);
    const [span] = buffer.spansOf(traceId);
    assert.ok(span);
    assert.equal(span.service, "AMS-0");
    assert.equal(span.name, "expert.node.forward");
    assert.equal(span.kind, "server");
    assert.equal(span.parentSpanId, parent);
    assert.equal(span.attributes["moe.expert"], "L1.E2");
    assert.equal(span.attributes["moe.experts"], 2);
    assert.equal(span.attributes["moe.tokens"], 6);
    assert.equal(span.attributes["moe.caller_region"], "ORD");
    assert.ok(span.durationMs >= 0 && span.durationMs < 60_000);
    assert.ok(Math.abs(span.startMs - Date.now()) < 60_000);
    // An observer that throws never fails the call.
    const throwing = new NodeClient(
      address,
      "ORD",
      directLinks,
      spanSinkOf({
        nodeSpans() {
          throw new Error("observer bug");
        },
      }),
    );
    clients.push(throwing);
    assert.equal((await forward(throwing, sampled)).tensors.length, 2);
    await tracing.shutdown();
  });

  it("recorded node spans also reach the OTLP exporter, as spans of the node's service", async () => {
    const received = new TraceRingBuffer(64);
    const collector = createServer(routeAll([otlpTraceRoute(received)]));
    await new Promise<void>((resolve) => collector.listen(0, "127.0.0.1", resolve));
    const tracing = new SwarmTracing({
      serviceName: "gateway",
      otlpEndpoint: `http://127.0.0.1:${(collector.address() as AddressInfo).port}/v1/traces`,
      activeContext: false,
    });
    try {
      const c = new NodeClient(address, "ORD", directLinks, (spans, node) =>
        tracing.recordRemoteSpans(node.nodeId, spans, { resource: { "moe.region": node.region } }),
      );
      clients.push(c);
      await forward(c, sampled);
      await tracing.flush();
      const [span] = received.spansOf(traceId);
      assert.equal(span?.service, "AMS-0");
      assert.equal(span?.name, "expert.node.forward");
      assert.equal(span?.parentSpanId, parent);
      assert.equal(span?.attributes["moe.tokens"], 6);
    } finally {
      await tracing.shutdown();
      collector.close();
    }
  });

  it("a request with a malformed span section gets an error reply; the node keeps serving", async () => {
    const good = encodeFrame({
      kind: FrameKind.request,
      op: Op.ping,
      requestId: 77,
      spans: [
        {
          traceId,
          spanId: parent,
          parentSpanId: "",
          name: WireSpanName.nodeForward,
          status: WireSpanStatus.ok,
          startSeconds: 1,
          startNanos: 0,
          durationNs: 5,
          layer: 0,
          expert: 0,
          experts: 1,
          tokens: 1,
        },
      ],
    });
    const bad = Buffer.from(good);
    bad.writeUInt8(0, bad.length - spanRecordBytes + 32); // name id 0 is not defined
    const raw = await RawConnection.open(address.port);
    raw.socket.write(bad);
    raw.socket.write(good);
    const frames = await raw.waitFrames(2);
    raw.end();
    assert.equal(frames[0]?.kind, FrameKind.error);
    assert.equal(frames[0]?.requestId, 77);
    assert.equal(frames[0]?.scalars[0], WireErrorCode.malformedFrame);
    assert.match(frames[0]?.text ?? "", /name id 0/);
    assert.equal(frames[1]?.kind, FrameKind.response, "the node still serves");
  });
});
