// `moe-swarm up` with the five BFT coordinators (the default, what `npm start` runs): the placement
// is published into the coordinators' replicated registry and the gateway reads it from there (a
// node registered by this test appears in the gateway's node list); /metrics counts consensus rounds
// for each coordinator (gpu_type "none"); the dashboard snapshot shows a leader and a growing
// committed height; kill -9 of the ORD coordinator leaves completions working and the view moves
// to a regional leader within a bounded time; SIGTERM leaves no process behind.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { describe, it } from "node:test";
import { RegistryClient } from "../../src/consensus/client.ts";
import type { RegistryState } from "../../src/consensus/registry.ts";
import { binPath } from "../../src/swarm/child-nodes.ts";
import { parseExposition } from "../observe/exposition.ts";

interface UpEvent {
  url: string;
  dashboard: string;
  metrics: string;
  nodePids: Record<string, number>;
  coordinators: Record<string, string>;
  coordinatorPids: Record<string, number>;
}

interface Snapshot {
  consensus: { leader: string; view: number; height: number } | null;
}

async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 20_000,
): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A process that has exited (or is a zombie waiting to be reaped) is not alive. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

async function complete(url: string): Promise<string> {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: "moe-swarm-local",
      prompt: "Call me",
      max_tokens: 4,
      temperature: 0,
    }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = (await res.json()) as {
    choices: { text: string }[];
    usage: { completion_tokens: number };
  };
  assert.equal(body.usage.completion_tokens, 4);
  return body.choices[0]?.text ?? "";
}

describe("moe-swarm up with the coordinators", { timeout: 120_000 }, () => {
  it("reads placement from the registry, shows live consensus, survives kill -9 of ORD, stops everything", async () => {
    const dir = mkdtempSync(join(tmpdir(), "moe-swarm-up-bft-"));
    const configPath = join(dir, "swarm.yaml");
    writeFileSync(configPath, `profile: local\nswarm:\n  data_dir: ${JSON.stringify(dir)}\n`);
    const child = spawn(
      process.execPath,
      [
        binPath,
        "--config",
        configPath,
        "up",
        "--untrained",
        "--port",
        "0",
        "--regions",
        "ORD,IAD,SJC",
        "--backend",
        "js",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let stderr = "";
    child.stderr.on("data", (c) => {
      stderr += c;
      if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
    });
    let client: RegistryClient | undefined;
    let pids: number[] = [];
    try {
      let printed = "";
      const event = await new Promise<UpEvent>((resolve, reject) => {
        createInterface({ input: child.stdout }).on("line", (line) => {
          printed += `${line}\n`;
          if (line.startsWith("{")) resolve(JSON.parse(line) as UpEvent);
        });
        child.once("exit", (code) =>
          reject(new Error(`up exited ${code}: ${stderr.slice(-3000)}`)),
        );
      });
      pids = [...Object.values(event.coordinatorPids), ...Object.values(event.nodePids)];
      assert.deepEqual(Object.keys(event.coordinators), ["ORD", "IAD", "SJC", "AMS", "SYD"]);
      assert.equal(Object.keys(event.coordinatorPids).length, 5);
      const api = event.dashboard.replace(/\/$/, "");
      const text = await complete(api);

      // The registry holds the nodes (address = the node's wire port) and the placement.
      client = new RegistryClient({
        endpoints: Object.values(event.coordinators).map((e) => {
          const [host, port] = e.split(":");
          return { host: host as string, port: Number(port) };
        }),
        deadlineMs: 15_000,
      });
      const reg = await client.getRegistry();
      assert.ok(reg.ok);
      const state = reg.value as RegistryState;
      assert.deepEqual(Object.keys(state.nodes).sort(), ["IAD-0", "ORD-0", "SJC-0"]);
      assert.ok(Object.values(state.nodes).every((n) => n.gpuType && /:\d+$/.test(n.address)));
      assert.ok(Object.keys(state.placements).length > 0);
      for (const ids of Object.values(state.placements)) assert.equal(ids.length, 3);
      await waitFor("the human-readable lines", async () =>
        printed.includes("coordinators (BFT") ? true : undefined,
      );
      // The gateway reads the registry live: a node registered now shows up in its node list.
      const extra = await client.registerNode("AMS-7", "AMS", "a10", "127.0.0.1:1");
      assert.ok(extra.ok);
      await waitFor("the registry's new node in the gateway", async () => {
        const s = (await (await fetch(`${api}/v1/swarm`)).json()) as {
          swarm: { nodes: { nodeId: string }[] };
        };
        return s.swarm.nodes.some((n) => n.nodeId === "AMS-7") ? true : undefined;
      });

      // Rounds of every coordinator on the gateway's /metrics, labelled gpu_type="none".
      await waitFor("consensus rounds of all five coordinators", async () => {
        const f = await parseExposition(await (await fetch(event.metrics)).text());
        const data = (f.moe_swarm_consensus_rounds_total?.data ?? []) as {
          labels: Record<string, string>;
          value: number;
        }[];
        const regions = data
          .filter((d) => d.value > 0 && d.labels.gpu_type === "none")
          .map((d) => d.labels.region);
        return ["ORD", "IAD", "SJC", "AMS", "SYD"].every((r) => regions.includes(r))
          ? true
          : undefined;
      });
      // The dashboard: a leader and a committed height that grows with registry writes.
      const snap = async () =>
        ((await (await fetch(`${api}/api/snapshot`)).json()) as Snapshot).consensus;
      const first = await waitFor(
        "a consensus status on the dashboard",
        async () => (await snap()) ?? undefined,
      );
      assert.match(first.leader, /^(ORD|IAD|SJC|AMS|SYD)$/);
      assert.ok((await client.heartbeat("AMS-7")).ok);
      await waitFor("a higher committed height", async () => {
        const c = await snap();
        return c && c.height > first.height ? c : undefined;
      });

      // kill -9 of the ORD coordinator: completions go on, and the view moves to a regional leader.
      const before = (await snap()) as NonNullable<Snapshot["consensus"]>;
      process.kill(event.coordinatorPids.ORD as number, "SIGKILL");
      assert.equal(await complete(api), text, "same greedy text");
      assert.ok((await client.deregisterNode("AMS-7")).ok, "the registry still commits writes");
      const after = await waitFor(
        "a view change away from ORD",
        async () => {
          const c = await snap();
          return c && c.view > before.view && c.leader !== "ORD" ? c : undefined;
        },
        30_000,
      );
      assert.notEqual(after.leader, "ORD");
      assert.equal(await complete(api), text);

      client.close();
      client = undefined;
      const exited = new Promise<number | null>((resolve) =>
        child.once("exit", (code) => resolve(code)),
      );
      child.kill("SIGTERM");
      assert.equal(await exited, 0, stderr.slice(-3000));
      await waitFor(
        "every coordinator and node process gone",
        async () => (pids.every((p) => !alive(p)) ? true : undefined),
        10_000,
      );
    } finally {
      client?.close();
      if (child.exitCode === null) child.kill("SIGKILL");
      for (const p of pids) if (alive(p)) process.kill(p, "SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
