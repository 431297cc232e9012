import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Prng } from "../../src/common/prng.ts";
import type { ExpertId } from "../../src/model/expert.ts";
import { type RemoteCallError, WireErrorCode } from "../../src/swarm/errors.ts";
import { ExpertNode } from "../../src/swarm/expert-node.ts";
import { encodeFrame, FrameKind, Op } from "../../src/swarm/frame.ts";
import { NodeClient } from "../../src/swarm/node-client.ts";
import { directLinks, type RegionLinks } from "../../src/swarm/region-links.ts";
import { RawConnection } from "./fixtures/raw-socket.ts";
import { TinyFfnHost } from "./fixtures/tiny-ffn.ts";

const d = 8;
const h = 16;
const experts: ExpertId[] = [
  { layer: 0, expert: 0 },
  { layer: 0, expert: 1 },
];

function randn(rng: Prng, n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal();
  return a;
}

describe("TinyFfnHost (test fixture)", () => {
  it("computes relu(x·W1+b1)·W2+b2 and its backward matches finite differences", async () => {
    const host = new TinyFfnHost(2, 3, experts, 1);
    const rng = new Prng(3);
    const x = randn(rng, 2);
    const dy = Float32Array.from([1, -2]);
    const dx = await host.backward(experts[0] as ExpertId, x, dy, 1);
    const eps = 1e-2;
    for (let i = 0; i < 2; i++) {
      const xp = Float32Array.from(x);
      const xm = Float32Array.from(x);
      xp[i] = (xp[i] as number) + eps;
      xm[i] = (xm[i] as number) - eps;
      const yp = await host.forward(experts[0] as ExpertId, xp, 1);
      const ym = await host.forward(experts[0] as ExpertId, xm, 1);
      const num =
        ((yp[0] as number) - (ym[0] as number)) * 1 + ((yp[1] as number) - (ym[1] as number)) * -2;
      assert.ok(Math.abs(num / (2 * eps) - (dx[i] as number)) < 1e-2, `dx[${i}]`);
    }
  });
});

describe("expert node", () => {
  let node: ExpertNode;
  let host: TinyFfnHost;
  let port = 0;
  let client: NodeClient;

  before(async () => {
    host = new TinyFfnHost(d, h, experts, 42);
    node = new ExpertNode({
      nodeId: "n0",
      region: "ORD",
      host,
      experts,
      dModel: d,
      links: directLinks,
    });
    port = (await node.listen()).port;
    client = new NodeClient(
      { nodeId: "n0", region: "ORD", host: "127.0.0.1", port },
      "ORD",
      directLinks,
    );
  });
  after(async () => {
    client.close();
    await node.close();
  });

  it("serves forward with the host's exact result and the weight version", async () => {
    const rng = new Prng(1);
    const x = randn(rng, 3 * d);
    const reference = await new TinyFfnHost(d, h, experts, 42).forward(
      experts[1] as ExpertId,
      x,
      3,
    );
    const f = await client.call({
      op: Op.forward,
      ids: [experts[1] as ExpertId],
      tensors: [{ dims: [3, d], data: x }],
      timeoutMs: 2000,
    });
    assert.deepEqual(f.tensors[0]?.data, reference);
    assert.deepEqual(f.scalars, [0]);
  });

  it("serves a grouped forward: one frame, one tensor and one weight version per expert, in order", async () => {
    const rng = new Prng(3);
    const xs = [randn(rng, 2 * d), randn(rng, 1 * d)];
    const reference = new TinyFfnHost(d, h, experts, 42);
    const f = await client.call({
      op: Op.forward,
      ids: [experts[1] as ExpertId, experts[0] as ExpertId],
      tensors: [
        { dims: [2, d], data: xs[0] as Float32Array },
        { dims: [1, d], data: xs[1] as Float32Array },
      ],
      timeoutMs: 2000,
    });
    assert.equal(f.tensors.length, 2);
    assert.deepEqual(f.tensors[0]?.dims, [2, d]);
    assert.deepEqual(
      f.tensors[0]?.data,
      await reference.forward(experts[1] as ExpertId, xs[0] as Float32Array, 2),
    );
    assert.deepEqual(
      f.tensors[1]?.data,
      await reference.forward(experts[0] as ExpertId, xs[1] as Float32Array, 1),
    );
    assert.equal(f.scalars.length, 2);
    for (const bad of [
      { ids: [experts[0], experts[0]], rows: [1, 1] }, // the same expert twice
      { ids: [experts[0], experts[1]], rows: [1] }, // one tensor for two experts
    ])
      await assert.rejects(
        client.call({
          op: Op.forward,
          ids: bad.ids as ExpertId[],
          tensors: bad.rows.map((r) => ({ dims: [r, d], data: new Float32Array(r * d) })),
          timeoutMs: 2000,
        }),
        (e: RemoteCallError) => e.code === WireErrorCode.badShape,
      );
  });

  it("merges concurrent requests for one expert into fewer expert calls, same results", async () => {
    const rng = new Prng(2);
    const inputs = Array.from({ length: 16 }, () => randn(rng, 2 * d));
    const reference = new TinyFfnHost(d, h, experts, 42);
    const want = await Promise.all(
      inputs.map((x) => reference.forward(experts[0] as ExpertId, x, 2)),
    );
    const callsBefore = host.forwardCalls;
    const got = await Promise.all(
      inputs.map((x) =>
        client.call({
          op: Op.forward,
          ids: [experts[0] as ExpertId],
          tensors: [{ dims: [2, d], data: x }],
          timeoutMs: 2000,
        }),
      ),
    );
    for (const [i, f] of got.entries()) assert.deepEqual(f.tensors[0]?.data, want[i]);
    const calls = host.forwardCalls - callsBefore;
    assert.ok(calls < inputs.length, `16 concurrent requests took ${calls} expert calls`);
  });

  it("answers a bad request with a typed error and keeps serving", async () => {
    await assert.rejects(
      client.call({
        op: Op.forward,
        ids: [{ layer: 9, expert: 9 }],
        tensors: [{ dims: [1, d], data: new Float32Array(d) }],
        timeoutMs: 2000,
      }),
      (e: RemoteCallError) =>
        e.code === WireErrorCode.unknownExpert && /L9\.E9 is not hosted/.test(e.message),
    );
    await assert.rejects(
      client.call({
        op: Op.forward,
        ids: [experts[0] as ExpertId],
        tensors: [{ dims: [1, d + 1], data: new Float32Array(d + 1) }],
        timeoutMs: 2000,
      }),
      (e: RemoteCallError) => e.code === WireErrorCode.badShape,
    );
    await assert.rejects(
      client.call({
        op: Op.applyUpdate,
        ids: [experts[0] as ExpertId],
        scalars: [0.5],
        timeoutMs: 2000,
      }),
      (e: RemoteCallError) => e.code === WireErrorCode.badShape,
    );
    await assert.rejects(
      client.call({ op: Op.exportState, ids: [experts[0] as ExpertId], timeoutMs: 2000 }),
      (e: RemoteCallError) =>
        e.code === WireErrorCode.unknownOp && /cannot export training state/.test(e.message),
    );
    await assert.rejects(
      client.call({
        op: Op.importState,
        ids: [experts[0] as ExpertId],
        text: "w1",
        tensors: [],
        scalars: [0],
        timeoutMs: 2000,
      }),
      (e: RemoteCallError) => e.code === WireErrorCode.badShape,
    );
    const ping = await client.call({ op: Op.ping, ids: [], timeoutMs: 2000 });
    assert.equal(ping.ids.length, 2);
  });

  it("training calls: backward accumulates, norm and update act, version increases", async () => {
    const rng = new Prng(4);
    const x = randn(rng, 2 * d);
    const dy = randn(rng, 2 * d);
    const id = experts[0] as ExpertId;
    const reference = new TinyFfnHost(d, h, experts, 42);
    const wantDx = await reference.backward(id, x, dy, 2);
    const f = await client.call({
      op: Op.backward,
      ids: [id],
      tensors: [
        { dims: [2, d], data: x },
        { dims: [2, d], data: dy },
      ],
      timeoutMs: 2000,
    });
    assert.deepEqual(f.tensors[0]?.data, wantDx);
    const norm = await client.call({ op: Op.gradSquaredNorm, ids: [id], timeoutMs: 2000 });
    assert.equal(norm.scalars[0], await reference.gradSquaredNorm([id]));
    const up = await client.call({
      op: Op.applyUpdate,
      ids: [id],
      scalars: [1, 0.1, 1],
      timeoutMs: 2000,
    });
    assert.deepEqual(up.scalars, [1]);
    await reference.applyUpdate([id], { step: 1, learningRate: 0.1, gradScale: 1 });
    const y = await client.call({
      op: Op.forward,
      ids: [id],
      tensors: [{ dims: [2, d], data: x }],
      timeoutMs: 2000,
    });
    assert.deepEqual(y.tensors[0]?.data, await reference.forward(id, x, 2));
    assert.deepEqual(y.scalars, [1]);
  });

  it("fuzz: random, truncated and mutated frames get error replies or a closed connection; the node keeps serving", async () => {
    const rng = new Prng(77);
    const valid = encodeFrame({
      kind: FrameKind.request,
      op: Op.forward,
      requestId: 9,
      ids: [experts[0] as ExpertId],
      tensors: [{ dims: [1, d], data: randn(rng, d) }],
    });
    let errorReplies = 0;
    for (let round = 0; round < 60; round++) {
      const conn = await RawConnection.open(port);
      let bytes: Buffer;
      const kind = round % 3;
      if (kind === 0) {
        bytes = Buffer.alloc(1 + rng.int(300));
        for (let j = 0; j < bytes.length; j++) bytes[j] = rng.int(256);
      } else if (kind === 1) {
        bytes = valid.subarray(0, rng.int(valid.length));
      } else {
        bytes = Buffer.from(valid);
        for (let j = 0; j < 3; j++) bytes[4 + rng.int(bytes.length - 4)] = rng.int(256);
      }
      conn.socket.write(bytes);
      if (kind === 2) {
        const frames = await conn.waitFrames(1, 1000);
        for (const f of frames) if (f.kind === FrameKind.error) errorReplies++;
      }
      conn.end();
      // after each bad input, a fresh, valid call still works
      if (round % 10 === 9) {
        const ok = await client.call({ op: Op.ping, ids: [], timeoutMs: 2000 });
        assert.equal(ok.kind, FrameKind.response);
      }
    }
    assert.ok(errorReplies > 0, "mutated frames got error replies");
    assert.ok(node.load().malformedFrames > 0);
    const after = await client.call({
      op: Op.forward,
      ids: [experts[0] as ExpertId],
      tensors: [{ dims: [1, d], data: new Float32Array(d) }],
      timeoutMs: 2000,
    });
    assert.equal(after.tensors[0]?.data.length, d);
  });

  it("an oversized length prefix gets a FRAME_TOO_LARGE reply and that connection is closed", async () => {
    const conn = await RawConnection.open(port);
    const head = Buffer.alloc(8);
    head.writeUInt32LE(0xfffffff0, 0);
    conn.socket.write(head);
    const frames = await conn.waitFrames(1);
    assert.equal(frames[0]?.kind, FrameKind.error);
    assert.equal(frames[0]?.scalars[0], WireErrorCode.frameTooLarge);
    await conn.waitFrames(2, 1000);
    assert.ok(conn.closed);
    conn.end();
  });
});

describe("emulated regions", () => {
  it("a call between regions pays at least both one-way delays; within a region none is added", async () => {
    const links: RegionLinks = { oneWayMs: (a, b) => (a === b ? 0 : 25), bitsPerSecond: undefined };
    const host = new TinyFfnHost(d, h, experts, 1);
    const node = new ExpertNode({ nodeId: "syd", region: "SYD", host, experts, dModel: d, links });
    const { port } = await node.listen();
    const far = new NodeClient(
      { nodeId: "syd", region: "SYD", host: "127.0.0.1", port },
      "AMS",
      links,
    );
    try {
      await far.call({ op: Op.ping, ids: [], timeoutMs: 2000 }); // connect
      const t0 = performance.now();
      await far.call({ op: Op.ping, ids: [], timeoutMs: 2000 });
      const rtt = performance.now() - t0;
      assert.ok(rtt >= 2 * 25 - 2, `RTT ${rtt.toFixed(1)} ms with 25 ms each way`);
      // FIFO on one link: answers of pipelined calls arrive in send order
      const order: number[] = [];
      await Promise.all(
        [0, 1, 2, 3].map((i) =>
          far.call({ op: Op.ping, ids: [], timeoutMs: 2000 }).then(() => order.push(i)),
        ),
      );
      assert.deepEqual(order, [0, 1, 2, 3]);
    } finally {
      far.close();
      await node.close();
    }
  });
});
