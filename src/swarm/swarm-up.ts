// `moe-swarm up` (what `npm start` runs): the whole local swarm on loopback. Expert nodes for every
// region (child processes, each hosting its planned experts), a placement file naming them, and the
// gateway (a child process too) in front; the URL to call is printed, and every child is stopped
// on SIGINT/SIGTERM. Children are real processes so that a node can be killed (kill -9) and the
// swarm keeps serving through the replicas.
// Observability (issue #8): the gateway's port also serves the dashboard, /metrics, the /live feed
// and the OTLP receiver; each node serves its own /metrics and exports its spans to the gateway,
// so the gateway's port is chosen before the nodes start (they are told where to export).

import type { ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import type { SwarmConfig } from "../config/schema.ts";
import { type ChildNode, spawnListening, spawnNode, stopChild } from "./child-nodes.ts";
import { placementToJson, planFromConfig } from "./placement.ts";

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
  const stopAll = async () => {
    await Promise.all(nodes.map((n) => stopChild(n.child)));
  };
  try {
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
    const global = cfg.regions.find((r) => r.role === "global_coordinator")?.code;
    const region = global && init.regions.includes(global) ? global : (init.regions[0] as string);
    const { child, event } = await spawnListening(
      [
        "gateway",
        "--placement",
        placementPath,
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
