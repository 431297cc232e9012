// The real gateway (model trunk + dispatcher) over in-process expert nodes: ready while every
// expert has a healthy replica, 503 on /readyz and an OpenAI-shaped 503 `swarm_unavailable` for a
// completion that needs an expert whose three replicas are all gone.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parseConfigText } from "../../src/config/load.ts";
import { startGateway } from "../../src/swarm/gateway.ts";
import { startModelNodes } from "./fixtures/model-nodes.ts";

describe("gateway readiness", { timeout: 60_000 }, () => {
  it("ready with a replica of every expert; 503 when an expert has none", async () => {
    const { config } = parseConfigText(
      "profile: local\nswarm:\n  emulation:\n    enabled: false\n",
    );
    const swarm = await startModelNodes(config);
    const { nodes } = swarm;
    const gateway = await startGateway(config, {
      placement: swarm.placement,
      port: 0,
      host: "127.0.0.1",
      trunk: "js",
    });
    try {
      assert.equal((await fetch(`${gateway.url}/readyz`)).status, 200);
      await nodes.get("SYD-0")?.close(); // one region down: still every expert has 2 replicas
      assert.equal((await fetch(`${gateway.url}/readyz`)).status, 200);
      // ORD, IAD and SJC hold all three replicas of experts 0, 5, 10, ... of every layer
      for (const id of ["ORD-0", "IAD-0", "SJC-0"]) await nodes.get(id)?.close();
      const ready = await fetch(`${gateway.url}/readyz`);
      assert.equal(ready.status, 503);
      const results = await Promise.all(
        ["Call me Ishmael.", "It was the best of times", "Whale!", "The sea"].map(
          async (prompt) => {
            const r = await fetch(`${gateway.url}/v1/completions`, {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: JSON.stringify({
                model: "moe-swarm-local",
                prompt,
                max_tokens: 4,
                temperature: 0,
              }),
            });
            return {
              status: r.status,
              body: (await r.json()) as { error?: { code: string; message: string } },
            };
          },
        ),
      );
      const unavailable = results.filter((r) => r.status === 503);
      assert.ok(unavailable.length > 0, `statuses ${results.map((r) => r.status)}`);
      for (const r of unavailable) {
        assert.equal(r.body.error?.code, "swarm_unavailable");
        assert.match(r.body.error?.message ?? "", /no replica answered/);
      }
    } finally {
      await gateway.close();
      await swarm.close();
    }
  });
});
