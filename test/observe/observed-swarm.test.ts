// End to end through a running swarm (gateway in this process, five expert nodes as child
// processes, see fixtures/observed-swarm.ts): one trace across the gateway and expert processes,
// `/metrics` of every process parsed by an independent parser, and the dashboard in real headless
// Chromium (Debian's `chromium`, driven by playwright-core) with live numbers changing while
// requests run, the Byzantine-evidence panel fed through the consensus feed, no console errors, and
// a screenshot saved under artifacts/.
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { chromium } from "playwright-core";
import type { PromHistogramData, PromMetrics } from "prom2javascript";
import { Prng } from "../../src/common/prng.ts";
import { buildLocalModel } from "../../src/model/build.ts";
import { mobyDick, sampleBatch } from "../../src/model/dataset.ts";
import { Trainer } from "../../src/model/trainer.ts";
import { SwarmRecorder } from "../../src/observe/swarm-recorder.ts";
import { ConsensusFeed } from "../../src/swarm/consensus-feed.ts";
import { defaultModelId } from "../../src/swarm/gateway.ts";
import { parseExposition } from "./exposition.ts";
import { evidenceStatusSource } from "./fixtures/evidence-statuses.ts";
import { type ObservedSwarm, startObservedSwarm } from "./fixtures/observed-swarm.ts";

const chromiumPath = "/usr/bin/chromium";
let swarm: ObservedSwarm;

async function complete(prompt: string, maxTokens: number, traceparent?: string): Promise<string> {
  const res = await fetch(`${swarm.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(traceparent ? { traceparent } : {}) },
    body: JSON.stringify({
      model: defaultModelId(swarm.config),
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
    }),
  });
  const body = (await res.json()) as { choices?: { text: string }[] };
  assert.equal(res.status, 200, JSON.stringify(body));
  return body.choices?.[0]?.text ?? "";
}

async function waitFor(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 30_000,
) {
  const until = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function assertSpecMetrics(families: PromMetrics, process: string): void {
  const coherence = families.moe_swarm_expert_coherence_time_seconds;
  assert.equal(coherence?.type, "histogram", `${process}: coherence histogram`);
  const fidelity = families.moe_swarm_gradient_entanglement_fidelity_ratio;
  assert.equal(fidelity?.type, "gauge", `${process}: fidelity gauge`);
  const rounds = families.moe_swarm_consensus_rounds_total;
  assert.equal(rounds?.type, "counter", `${process}: consensus rounds counter`);
}

describe("observability through a running swarm", { timeout: 170_000 }, () => {
  before(async () => {
    swarm = await startObservedSwarm();
  });
  after(async () => {
    await swarm?.close();
  });

  it("one trace covers the gateway and the expert node processes, with the caller's trace id", async () => {
    const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
    const callerSpan = "00f067aa0ba902b7";
    await complete("Call me Ishmael.", 2, `00-${traceId}-${callerSpan}-01`);
    // The nodes' spans came back in their reply frames (frame-spans.ts), so they are here as soon
    // as the completion is: no wait for an export (the nodes' OTLP exporter, 100 ms batches, is
    // configured but only used for callers that do not collect spans).
    assert.ok(swarm.traces.spansOf(traceId).some((s) => s.service !== "gateway"));
    const t = swarm.traces.trace(traceId);
    assert.ok(t);
    const spans = swarm.traces.spansOf(traceId);
    const http = spans.find((s) => s.name === "POST /v1/completions");
    assert.equal(http?.service, "gateway");
    assert.equal(http?.kind, "server");
    assert.equal(http?.parentSpanId, callerSpan, "the gateway continued the caller's trace");
    const calls = spans.filter((s) => s.name === "expert.forward");
    assert.ok(calls.length >= 3, `expert calls: ${calls.length}`);
    for (const c of calls) {
      assert.equal(c.service, "gateway");
      assert.equal(c.parentSpanId, http?.spanId);
    }
    const served = spans.filter((s) => s.name === "expert.node.forward");
    assert.ok(served.length > 0);
    const callIds = new Set(calls.map((c) => c.spanId));
    for (const s of served) {
      assert.match(s.service, /^(ORD|IAD|SJC|AMS|SYD)-0$/);
      assert.ok(callIds.has(s.parentSpanId), "each node span is the child of a gateway call span");
      assert.equal(s.attributes["moe.caller_region"], "ORD");
    }
    assert.ok(t.services.includes("gateway"));
    assert.ok(t.services.some((s) => /^(ORD|IAD|SJC|AMS|SYD)-0$/.test(s)));
    // Also through the dashboard's API, as the page reads it.
    const res = await fetch(`${swarm.url}/api/traces/${traceId}`);
    assert.equal(res.status, 200);
    const viaApi = (await res.json()) as { spanCount: number; roots: unknown[] };
    assert.ok(viaApi.spanCount >= spans.length, `${viaApi.spanCount} ≥ ${spans.length}`);
  });

  it("serves /metrics on every process, parseable, with every spec metric", async () => {
    const gateway = await parseExposition(await (await fetch(`${swarm.url}/metrics`)).text());
    assertSpecMetrics(gateway, "gateway");
    const requests = gateway.moe_swarm_request_duration_seconds?.data as PromHistogramData[];
    assert.ok(requests.some((d) => d.labels.route === "/v1/completions" && d.count >= 1));
    const calls = gateway.moe_swarm_expert_call_duration_seconds?.data as PromHistogramData[];
    assert.ok(calls.some((d) => d.labels.outcome === "ok" && d.count >= 3));
    swarm.tick();
    const again = await parseExposition(await (await fetch(`${swarm.url}/metrics`)).text());
    assert.ok((again.moe_swarm_expert_activations_total?.data.length ?? 0) > 0);
    assert.equal(again.moe_swarm_node_up?.data.length, 5);
    for (const node of swarm.nodes) {
      const text = await (await fetch(`http://127.0.0.1:${node.metricsPort}/metrics`)).text();
      const families = await parseExposition(text);
      assertSpecMetrics(families, node.nodeId);
      const served = families.moe_swarm_request_duration_seconds?.data as
        | PromHistogramData[]
        | undefined;
      for (const d of served ?? []) assert.equal(d.labels.process, node.nodeId);
    }
  });

  it("the dashboard in headless Chromium: loads, shows live numbers that change while requests run, no console errors, screenshot", async (t) => {
    if (!existsSync(chromiumPath)) {
      // CI installs it (.ci/run), so there a missing browser is a failure, not a skip.
      assert.ok(!process.env.CI, `${chromiumPath} missing: .ci/run should have installed chromium`);
      t.skip(`${chromiumPath} missing: install Debian's chromium (apt-get install chromium)`);
      return;
    }
    const profile = mkdtempSync(join(tmpdir(), "moe-swarm-chromium-"));
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      viewport: { width: 1400, height: 1000 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    try {
      const page = context.pages()[0] ?? (await context.newPage());
      const problems: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error") problems.push(`console: ${m.text()}`);
      });
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
      await page.goto(swarm.url);
      await page.locator("#conn", { hasText: "live" }).waitFor();
      const before = Number(await page.locator("#kpi-requests").textContent());

      // Load while the page watches: real completions through the swarm, and real training steps
      // of the local model whose loss the dashboard plots.
      const { model } = await buildLocalModel(swarm.config, { backend: "js" });
      const trainer = new Trainer(model);
      const text = mobyDick().train;
      const rng = new Prng(7);
      const training = (async () => {
        for (let step = 1; step <= 12; step++) {
          const r = await trainer.trainStep(sampleBatch(text, 2, 16, rng), 3e-3);
          swarm.metrics.recordTrainingStep(trainer.step, r.loss);
          swarm.metrics.recordTokens("train", r.tokens);
        }
      })();
      for (let i = 0; i < 4; i++) await complete(`Request ${i}: the whale`, 3);
      await training;

      const requestsShown = async () => Number(await page.locator("#kpi-requests").textContent());
      await waitFor(
        "the page counts the new requests",
        async () => (await requestsShown()) >= before + 4,
      );
      const after = Number(await page.locator("#kpi-requests").textContent());
      assert.ok(after >= before + 4, `requests ${before} → ${after}`);
      assert.notEqual(await page.locator("#kpi-p50").textContent(), "–");
      await page.locator("#loss-last", { hasText: "step 12" }).waitFor();
      const heatTotals = async () =>
        (
          await page
            .locator("#heatmaps canvas")
            .evaluateAll((cs) => cs.map((c) => c.getAttribute("data-total")))
        ).map(Number);
      await waitFor("activations in the heatmaps", async () =>
        (await heatTotals()).some((n) => n > 0),
      );
      assert.equal(await page.locator("#heatmaps .heat").count(), 3); // three tiers
      await waitFor(
        "five nodes up",
        async () => (await page.locator("#nodes tbody td.up").count()) === 5,
      );
      await waitFor(
        "ten labelled links",
        async () => (await page.locator("#map text[data-link]").count()) === 10,
      );
      // Links from the gateway's region to regions that served calls carry measured RTTs (solid
      // lines); the others show the configured RTT (dashed).
      await waitFor(
        "a measured link",
        async () => (await page.locator('#map line[stroke-dasharray=""]').count()) >= 1,
      );
      // Recent traces: open the newest and see spans from a node process in its tree.
      await page.locator("#trace-list li[data-trace]").first().waitFor();
      await page
        .locator("#trace-list li[data-trace]", { hasText: "POST /v1/completions" })
        .first()
        .click();
      await page
        .locator("#trace-tree .span .svc", { hasText: /^(ORD|IAD|SJC|AMS|SYD)-0 · / })
        .first()
        .waitFor();

      // Byzantine evidence: the coordinators' answers go through the gateway's consensus feed
      // (this swarm runs no coordinators; the answers are a fixture's), and the panel shows how
      // many coordinators report each accused one.
      await new ConsensusFeed(
        evidenceStatusSource,
        new SwarmRecorder(swarm.metrics),
        swarm.config.consensus.algorithm,
      ).poll();
      await page.locator('#evidence tr[data-accused="SYD"] td', { hasText: "2 of 4" }).waitFor();
      assert.equal(
        await page.locator('#evidence tr[data-accused="AMS"] td').nth(1).textContent(),
        "1 of 4",
      );
      await page.locator("#evidence-recent li", { hasText: "IAD → AMS" }).waitFor();

      mkdirSync("artifacts", { recursive: true });
      await page.screenshot({ path: "artifacts/dashboard.png", fullPage: true });
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    }
  });
});
