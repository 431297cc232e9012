// `moe-swarm up` (what `npm start` runs): the whole local swarm on loopback. Expert nodes for every
// region (child processes, each hosting its planned experts), a placement file naming them, and the
// gateway (a child process too) in front; the URL to call is printed, and every child is stopped
// on SIGINT/SIGTERM. Children are real processes so that a node can be killed (kill -9) and the
// swarm keeps serving through the replicas.
// Observability (issue #8): the gateway's port also serves the dashboard, /metrics, the /live feed
// and the OTLP receiver; each node serves its own /metrics and exports its spans to the gateway,
// so the gateway's port is chosen before the nodes start (they are told where to export).
// Coordinators (issue #6): unless `coordinators: false`, the five BFT coordinators (ORD, IAD, SJC,
// AMS, SYD; `moe-swarm coordinator`, each a child process with the emulated inter-region latency
// on its links) start first, on loopback; once the nodes listen, the placement plan is written into
// their replicated registry (publishPlacement, through consensus), and the gateway reads placement
// from the registry (`--registry`) instead of the file. The placement file is still written, as a
// record of the plan. Membership: each node process is given the coordinators' endpoints
// (`moe-swarm node --registry`), registers itself and heartbeats every `nodeHeartbeatMs`; `up`
// sets the registry's node TTL to nodeTtlHeartbeats heartbeats, so a node killed with -9 is marked
// expired by the registry within that time and the gateway's placement view stops offering it.

import type { ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import type { SwarmConfig } from "../config/schema.ts";
import type { RegistryClient } from "../consensus/client.ts";
import { LocalCoordinatorCluster } from "../consensus/local-cluster.ts";
import { type PlacementEntry, publishPlacement } from "../consensus/placement-view.ts";
import type { RegistryState } from "../consensus/registry.ts";
import { regionsInLeaderOrder } from "../consensus/types.ts";
import { type ChildNode, spawnListening, spawnPlan, stopChild } from "./child-nodes.ts";
import { nodeGpuType } from "./node-process.ts";
import { placementToJson, planFromConfig, plannedEntries } from "./placement.ts";

/** A child's line without the `[name] ` tag it already carries (the parent adds its own). */
function withoutPrefix(line: string, name: string): string {
  const tag = `[${name}] `;
  return line.startsWith(tag) ? line.slice(tag.length) : line;
}

export { nodeGpuType };

/** How often each node process heartbeats into the registry (default of SwarmUpInit). */
export const nodeHeartbeatMs = 5000;
/** A node is expired after this many heartbeat intervals without one. */
export const nodeTtlHeartbeats = 3;
/** How long `up` waits for every node to have registered itself before it sets the placement. */
const nodesRegisteredWaitMs = 30_000;
/** Ports a coordinator cluster uses above its base: peers on base+0..4, clients on base+10..14. */
const coordinatorPortSpan = 15;
/** Tries to find a free block of coordinator ports before giving up. */
const portBaseTriesMax = 20;

export interface SwarmUpInit {
  /** The config file the children load (same as the parent's); undefined = built-in profile. */
  readonly configPath: string | undefined;
  readonly regions: readonly string[];
  readonly nodesPerRegion: number;
  /** Gateway HTTP port (0 = any free port). */
  readonly gatewayPort: number;
  readonly modelPath: string | undefined;
  readonly backend?: string;
  readonly log?: (line: string) => void;
  /** Start the BFT coordinators and read placement from them (default true). */
  readonly coordinators?: boolean;
  /** Coordinator port base (peers on base+i, clients on base+10+i); default: a free block. */
  readonly coordinatorPortBase?: number;
  /** Node heartbeat interval into the registry (default nodeHeartbeatMs); TTL = 3 intervals. */
  readonly nodeHeartbeatMs?: number;
}

export interface RunningCoordinators {
  /** Client endpoints in replica order (ORD, IAD, SJC, AMS, SYD). */
  readonly endpoints: readonly { region: string; host: string; port: number }[];
  /** Process id of each coordinator, by region. */
  readonly pids: Record<string, number>;
  /** Each coordinator's Prometheus /metrics URL, by region. */
  readonly metrics: Record<string, string>;
}

export interface RunningSwarm {
  /** The gateway: OpenAI API, and the dashboard at `/`. */
  readonly url: string;
  /** The same server as a local client dials it (a wildcard bind address becomes loopback). */
  readonly dashboardUrl: string;
  readonly metricsUrl: string;
  readonly liveUrl: string;
  readonly nodes: readonly ChildNode[];
  readonly gateway: ChildProcess;
  readonly placementPath: string;
  /** Null with `coordinators: false` (static placement file). */
  readonly coordinators: RunningCoordinators | null;
  stop(): Promise<void>;
}

/** A port free on `host` now (bound and released), for a server started a moment later. */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, host, () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/** A base port with the coordinators' whole block (base .. base+14) free on `host` now. */
export async function freeCoordinatorPortBase(host: string): Promise<number> {
  for (let t = 0; t < portBaseTriesMax; t++) {
    const base = await freePort(host);
    if (base + coordinatorPortSpan > 65535) continue;
    let all = true;
    for (let p = base; p < base + coordinatorPortSpan && all; p++) all = await portFree(host, p);
    if (all) return base;
  }
  throw new Error(
    `no block of ${coordinatorPortSpan} free ports for the coordinators after ${portBaseTriesMax} tries; pass --coordinator-port-base`,
  );
}

/**
 * Writes the plan into the registry: nodes of an earlier run that are not in this plan are
 * deregistered (their addresses are dead), the node TTL is set, and once every node of the plan
 * has registered itself (they do so as they start) each expert's replicas are set.
 */
async function publishPlan(
  client: RegistryClient,
  entries: readonly PlacementEntry[],
  ttlMs: number,
): Promise<void> {
  const ttl = await client.setNodeTtl(ttlMs);
  if (!ttl.ok) throw new Error(`node TTL: ${ttl.error}`);
  const want = new Set(entries.map((e) => e.nodeId));
  const deadline = Date.now() + nodesRegisteredWaitMs;
  for (;;) {
    const r = await client.getRegistry();
    if (!r.ok) throw new Error(`registry read: ${r.error}`);
    const nodes = (r.value as RegistryState).nodes;
    for (const id of Object.keys(nodes))
      if (!want.has(id)) {
        const d = await client.deregisterNode(id);
        if (!d.ok) throw new Error(`deregister ${id}: ${d.error}`);
      }
    const missing = [...want].filter((id) => nodes[id] === undefined);
    if (missing.length === 0) break;
    if (Date.now() > deadline)
      throw new Error(
        `nodes ${missing.join(", ")} did not register with the coordinators within ${nodesRegisteredWaitMs} ms`,
      );
    await new Promise((r) => setTimeout(r, 200));
  }
  await publishPlacement(client, entries, { register: false });
}

/** The host a local client dials for a server bound to `host` (a wildcard → loopback). */
export function dialHost(host: string): string {
  return host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host;
}

export async function swarmUp(cfg: SwarmConfig, init: SwarmUpInit): Promise<RunningSwarm> {
  const plan = planFromConfig(cfg, init.regions, init.nodesPerRegion);
  // The nodes export spans to the gateway's OTLP receiver: fix its port before they start.
  const gatewayPort = init.gatewayPort === 0 ? await freePort(cfg.swarm.host) : init.gatewayPort;
  const otlp = `http://${dialHost(cfg.swarm.host)}:${gatewayPort}/v1/traces`;
  const nodes: ChildNode[] = [];
  let cluster: LocalCoordinatorCluster | null = null;
  let registry: RegistryClient | null = null;
  const heartbeatMs = init.nodeHeartbeatMs ?? nodeHeartbeatMs;
  const stopAll = async () => {
    registry?.close();
    await Promise.all([...nodes.map((n) => stopChild(n.child)), cluster?.stop()]);
  };
  try {
    if (init.coordinators ?? true) {
      const portBase = init.coordinatorPortBase ?? (await freeCoordinatorPortBase("127.0.0.1"));
      cluster = new LocalCoordinatorCluster({
        dataDir: join(cfg.swarm.data_dir, "consensus"),
        portBase,
        ...(init.configPath ? { configPath: init.configPath } : {}),
        onLog: (region, line) =>
          init.log?.(`[coordinator ${region}] ${withoutPrefix(line, region)}`),
      });
      await cluster.start();
      registry = cluster.client({ deadlineMs: 20_000 });
    }
    nodes.push(
      ...(await spawnPlan(plan, (p) => ({
        configPath: init.configPath,
        backend: init.backend,
        modelPath: init.modelPath,
        regions: init.regions,
        nodesPerRegion: init.nodesPerRegion,
        otlp,
        ...(cluster
          ? {
              registry: cluster.endpoints.map((e) => `${e.host}:${e.port}`).join(","),
              heartbeatMs,
            }
          : {}),
        onLog: (line) => init.log?.(`[${p.nodeId}] ${withoutPrefix(line, p.nodeId)}`),
      }))),
    );
    const placementPath = join(cfg.swarm.data_dir, "placement.json");
    mkdirSync(cfg.swarm.data_dir, { recursive: true });
    const entries = plannedEntries(nodes, plan);
    writeFileSync(placementPath, `${JSON.stringify(placementToJson(entries), null, 1)}\n`);
    if (registry) {
      const client = registry;
      await publishPlan(
        client,
        entries.map((e) => ({ ...e, gpuType: nodeGpuType(cfg, e.experts) })),
        nodeTtlHeartbeats * heartbeatMs,
      );
    }
    const registryArgs = cluster
      ? ["--registry", cluster.endpoints.map((e) => `${e.host}:${e.port}`).join(",")]
      : ["--placement", placementPath];
    const global = cfg.regions.find((r) => r.role === "global_coordinator")?.code;
    const region = global && init.regions.includes(global) ? global : (init.regions[0] as string);
    const { child, event } = await spawnListening(
      [
        "gateway",
        ...registryArgs,
        "--port",
        String(gatewayPort),
        "--region",
        region,
        ...(init.modelPath ? ["--model", init.modelPath] : []),
      ],
      init.configPath,
      (line) => init.log?.(`[gateway] ${line}`),
    );
    const url = String(event.url);
    const dial = `http://${dialHost(new URL(url).hostname)}:${new URL(url).port}`;
    return {
      url,
      dashboardUrl: typeof event.dashboard === "string" ? event.dashboard : `${dial}/`,
      metricsUrl: typeof event.metrics === "string" ? event.metrics : `${dial}/metrics`,
      liveUrl: typeof event.live === "string" ? event.live : `${dial.replace(/^http/, "ws")}/live`,
      nodes,
      gateway: child,
      placementPath,
      coordinators: cluster
        ? {
            endpoints: cluster.endpoints.map((e, i) => ({
              region: regionsInLeaderOrder[i] as string,
              ...e,
            })),
            pids: cluster.pids(),
            metrics: cluster.metricsUrls(),
          }
        : null,
      async stop() {
        await stopChild(child);
        await stopAll();
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}
