import assert from "node:assert/strict";
import { request } from "node:http";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import type { ExpertId } from "../../src/model/expert.ts";
import { OpenAiApi } from "../../src/swarm/openai-api.ts";
import { planPlacement } from "../../src/swarm/placement.ts";
import { directLinks } from "../../src/swarm/region-links.ts";
import { RemoteExpertHost } from "../../src/swarm/remote-expert-host.ts";
import { ByteGenerator } from "./fixtures/byte-generator.ts";
import { LocalSwarm } from "./fixtures/local-swarm.ts";

const d = 16;
const experts: ExpertId[] = Array.from({ length: 5 }, (_, e) => ({ layer: 0, expert: e }));

let swarm: LocalSwarm;
let dispatcher: RemoteExpertHost;
let generator: ByteGenerator;
let api: OpenAiApi;
let url = "";
let client: OpenAI;

function raw(method: string, path: string, body?: string, headers: Record<string, string> = {}) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(
      `${url}${path}`,
      { method, headers: { "content-type": "application/json", ...headers } },
      (res) => {
        let text = "";
        res.on("data", (c) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

describe("gateway HTTP API (OpenAI-compatible)", () => {
  before(async () => {
    swarm = new LocalSwarm(d, 16, 3, directLinks);
    const placement = await swarm.start(
      planPlacement(experts, ["ORD", "IAD", "SJC", "AMS", "SYD"], 1, 3),
    );
    dispatcher = new RemoteExpertHost({ registry: placement, region: "ORD", dModel: d });
    generator = new ByteGenerator(dispatcher, d, 0, experts.length);
    api = new OpenAiApi({
      generator,
      ready: async () => (await dispatcher.probeAll()) > 0,
      swarmStats: () => ({ dispatch: dispatcher.counters, nodes: dispatcher.nodeStats() }),
    });
    url = (await api.listen("127.0.0.1", 0)).url;
    client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0 });
  });
  after(async () => {
    await api.close();
    dispatcher.close();
    await swarm.close();
  });

  it("the official openai client gets a completion", async () => {
    const r = await client.completions.create({
      model: "tiny-bytes",
      prompt: "Call me Ishmael.",
      max_tokens: 12,
      temperature: 0,
    });
    assert.equal(r.object, "text_completion");
    assert.equal(r.choices[0]?.text.length, 12);
    assert.equal(r.choices[0]?.finish_reason, "length");
    assert.deepEqual(r.usage, { prompt_tokens: 16, completion_tokens: 12, total_tokens: 28 });
    // greedy decoding is deterministic
    const again = await client.completions.create({
      model: "tiny-bytes",
      prompt: "Call me Ishmael.",
      max_tokens: 12,
      temperature: 0,
    });
    assert.equal(again.choices[0]?.text, r.choices[0]?.text);
  });

  it("the official openai client streams a chat completion; the pieces make the whole", async () => {
    const messages = [{ role: "user" as const, content: "Hello" }];
    const whole = await client.chat.completions.create({
      model: "tiny-bytes",
      messages,
      max_tokens: 10,
      seed: 7,
    });
    const stream = await client.chat.completions.create({
      model: "tiny-bytes",
      messages,
      max_tokens: 10,
      seed: 7,
      stream: true,
    });
    let text = "";
    let chunks = 0;
    let finish: string | null | undefined;
    let role: string | undefined;
    for await (const chunk of stream) {
      chunks++;
      role ??= chunk.choices[0]?.delta.role;
      text += chunk.choices[0]?.delta.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(role, "assistant");
    assert.equal(text, whole.choices[0]?.message.content);
    assert.ok(chunks >= 10, `${chunks} chunks`);
    assert.equal(finish, "length");
  });

  it("stop sequences end generation with finish_reason stop", async () => {
    const r = await client.completions.create({
      model: "tiny-bytes",
      prompt: "abc",
      max_tokens: 40,
      temperature: 0,
    });
    const text = r.choices[0]?.text ?? "";
    const stopAt = text.slice(5, 7);
    const s = await client.completions.create({
      model: "tiny-bytes",
      prompt: "abc",
      max_tokens: 40,
      temperature: 0,
      stop: [stopAt],
    });
    assert.equal(
      s.choices[0]?.finish_reason,
      "stop",
      `${JSON.stringify(text)} stop ${JSON.stringify(stopAt)}: ${JSON.stringify(s.choices[0])}`,
    );
    assert.equal(s.choices[0]?.text, text.slice(0, text.indexOf(stopAt)));
  });

  it("lists the model and answers health and readiness", async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ["tiny-bytes"],
    );
    assert.equal((await raw("GET", "/healthz")).status, 200);
    assert.equal((await raw("GET", "/readyz")).status, 200);
    // readiness probes every node; their load reports show in /v1/swarm
    const stats = JSON.parse((await raw("GET", "/v1/swarm")).body) as {
      swarm: { nodes: { nodeId: string; healthy: boolean; load?: { servedRequests: number } }[] };
    };
    assert.equal(stats.swarm.nodes.length, 5);
    const served = stats.swarm.nodes.reduce((s, n) => s + (n.load?.servedRequests ?? 0), 0);
    assert.ok(served > 0, "nodes report the requests they served");
  });

  it("bad requests get OpenAI-shaped errors with the right status", async () => {
    const cases: [string, string, string | undefined, number, RegExp][] = [
      ["POST", "/v1/completions", "{not json", 400, /not valid JSON/],
      ["POST", "/v1/completions", JSON.stringify({ prompt: "x" }), 400, /model/],
      [
        "POST",
        "/v1/completions",
        JSON.stringify({ model: "tiny-bytes", prompt: 5 }),
        400,
        /prompt: expected a string or a list of exactly one string; got number/,
      ],
      [
        "POST",
        "/v1/completions",
        JSON.stringify({ model: "tiny-bytes", prompt: "x", max_tokens: -1 }),
        400,
        /max_tokens/,
      ],
      [
        "POST",
        "/v1/completions",
        JSON.stringify({ model: "tiny-bytes", prompt: "x", n: 2 }),
        400,
        /n:/,
      ],
      [
        "POST",
        "/v1/completions",
        JSON.stringify({ model: "gpt-4", prompt: "x" }),
        404,
        /does not exist/,
      ],
      [
        "POST",
        "/v1/completions",
        JSON.stringify({ model: "tiny-bytes", prompt: "x", max_tokens: 1000 }),
        400,
        /context is 256 tokens/,
      ],
      [
        "POST",
        "/v1/chat/completions",
        JSON.stringify({ model: "tiny-bytes", messages: [] }),
        400,
        /messages/,
      ],
      [
        "POST",
        "/v1/chat/completions",
        JSON.stringify({ model: "tiny-bytes", messages: [{ role: "wizard", content: "x" }] }),
        400,
        /messages\.0\.role/,
      ],
      ["GET", "/v1/completions", undefined, 405, /accepts POST/],
      ["GET", "/v2/nothing", undefined, 404, /no route/],
      ["POST", "/v1/completions", "x".repeat(1024 * 1024 + 10), 413, /exceeds/],
    ];
    for (const [method, path, body, status, message] of cases) {
      const r = await raw(method, path, body);
      assert.equal(r.status, status, `${method} ${path} ${body?.slice(0, 60)}: ${r.body}`);
      const e = JSON.parse(r.body) as { error: { message: string; type: string } };
      assert.match(e.error.message, message);
      assert.ok(e.error.type.length > 0);
    }
    const wrongType = await raw("POST", "/v1/completions", "{}", { "content-type": "text/plain" });
    assert.equal(wrongType.status, 400);
    // the server still serves
    assert.equal((await raw("GET", "/healthz")).status, 200);
  });

  it("a node killed mid-generation: the streamed request still completes and the failover is reported", async () => {
    generator.tokenDelayMs = 5;
    try {
      const want = (
        await client.completions.create({
          model: "tiny-bytes",
          prompt: "Q",
          max_tokens: 40,
          temperature: 0,
        })
      ).choices[0]?.text;
      const stream = await client.completions.create({
        model: "tiny-bytes",
        prompt: "Q",
        max_tokens: 40,
        temperature: 0,
        stream: true,
      });
      let text = "";
      let n = 0;
      const failoversBefore = dispatcher.counters.failovers;
      const callsBefore = swarm.nodes.map((x) => x.host.forwardCalls);
      for await (const chunk of stream) {
        text += chunk.choices[0]?.text ?? "";
        if (++n === 5) {
          // stop the replica that has been serving
          const served = swarm.nodes.map(
            (x, i) => x.host.forwardCalls - (callsBefore[i] as number),
          );
          await swarm.nodes[served.indexOf(Math.max(...served))]?.node.close();
        }
      }
      assert.equal(text, want);
      const stats = JSON.parse((await raw("GET", "/v1/swarm")).body) as {
        swarm: { dispatch: { failovers: number } };
      };
      assert.ok(stats.swarm.dispatch.failovers > failoversBefore, "failover reported in /v1/swarm");
    } finally {
      generator.tokenDelayMs = 0;
    }
  });

  it("bounded load: 24 concurrent completions all succeed", async () => {
    const results = await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        client.completions.create({ model: "tiny-bytes", prompt: `p${i}`, max_tokens: 8, seed: i }),
      ),
    );
    for (const r of results) assert.equal(r.choices[0]?.text.length, 8);
  });
});
