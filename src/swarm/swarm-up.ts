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
// record of the plan. Heartbeats: `up` sends them to the registry ON BEHALF of its node processes,
// every `nodeHeartbeatMs`, for each node whose process is still running — the node processes
// themselves do not talk to the coordinators (so a heartbeat says "the process is alive", not "it
// serves"; the gateway's health probes measure the latter).

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
import { modelConfigFrom, moeLayers } from "../model/config.ts";
import type { ExpertId } from "../model/expert.ts";
import { type ChildNode, spawnListening, spawnNode, stopChild } from "./child-nodes.ts";
import { placementToJson, planFromConfig } from "./placement.ts";

/** How often `up` heartbeats each live node process into the registry. */
export const nodeHeartbeatMs = 5000;
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
 * The GPU type a node registers with: the gpu_type of the tier (config hierarchical_layers) that
 * most of its experts belong to (ties: the earlier tier). A node of the plan hosts experts of
 * several tiers; the registry keeps one GPU type per node.
 */
export function nodeGpuType(
  cfg: SwarmConfig,
  experts: readonly ExpertId[],
): PlacementEntry["gpuType"] {
  const tiers = cfg.expert_topology.hierarchical_layers;
  const tierOfLayer = new Map(moeLayers(modelConfigFrom(cfg)).map((l) => [l.layer, l.tierIndex]));
  const counts = new Array<number>(tiers.length).fill(0);
  for (const id of experts) {
    const t = tierOfLayer.get(id.layer);
    if (t !== undefined) counts[t] = (counts[t] ?? 0) + 1;
  }
  let best = 0;
  counts.forEach((c, t) => {
    if (c > (counts[best] ?? 0)) best = t;
  });
  return (tiers[best] ?? tiers[0])?.gpu_type ?? "a10";
}

/**
 * Writes the plan into the registry: nodes of an earlier run that are not in this plan are
 * deregistered (their addresses are dead), then publishPlacement registers the nodes and sets each
 * expert's replicas.
 */
async function publishPlan(
  client: RegistryClient,
  entries: readonly PlacementEntry[],
): Promise<void> {
  const before = await client.getRegistry();
  if (before.ok) {
    const keep = new Set(entries.map((e) => e.nodeId));
    for (const id of Object.keys((before.value as RegistryState).nodes))
      if (!keep.has(id)) {
        const r = await client.deregisterNode(id);
        if (!r.ok) throw new Error(`deregister ${id}: ${r.error}`);
      }
  }
  await publishPlacement(client, entries);
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
  let heartbeat: NodeJS.Timeout | undefined;
  let stopped = false;
  const stopAll = async () => {
    stopped = true;
    clearInterval(heartbeat);
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
        onLog: (region, line) => init.log?.(`[coordinator ${region}] ${line}`),
      });
      await cluster.start();
      registry = cluster.client({ deadlineMs: 20_000 });
    }
    const started = await Promise.allSettled(
      plan.map((p) => {
        const [region, index] = p.nodeId.split("-") as [string, string];
        return spawnNode(region, Number(index), {
          configPath: init.configPath,
          backend: init.backend,
          modelPath: init.modelPath,
          regions: init.regions,
          nodesPerRegion: init.nodesPerRegion,
          otlp,
          onLog: (line) => init.log?.(`[${p.nodeId}] ${line}`),
        });
      }),
    );
    for (const s of started) if (s.status === "fulfilled") nodes.push(s.value);
    const failed = started.find((s) => s.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    const placementPath = join(cfg.swarm.data_dir, "placement.json");
    mkdirSync(cfg.swarm.data_dir, { recursive: true });
    const entries = nodes.map((n) => ({
      nodeId: n.nodeId,
      region: n.region,
      host: n.host,
      port: n.port,
      experts: plan.find((p) => p.nodeId === n.nodeId)?.experts ?? [],
    }));
    writeFileSync(placementPath, `${JSON.stringify(placementToJson(entries), null, 1)}\n`);
    if (registry) {
      const client = registry;
      await publishPlan(
        client,
        entries.map((e) => ({ ...e, gpuType: nodeGpuType(cfg, e.experts) })),
      );
      let beating = false;
      heartbeat = setInterval(() => {
        if (beating || stopped) return;
        beating = true;
        (async () => {
          for (const n of nodes)
            if (n.child.exitCode === null && n.child.signalCode === null)
              await client.heartbeat(n.nodeId);
        })()
          .catch((err: Error) => {
            if (!stopped) init.log?.(`registry heartbeat failed: ${err.message}`);
          })
          .finally(() => {
            beating = false;
          });
      }, nodeHeartbeatMs);
      heartbeat.unref();
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
