// `moe-swarm up` (what `npm start` runs): the whole local swarm on loopback. Expert nodes for every
// region (child processes, each hosting its planned experts), a placement file naming them, and the
// gateway (a child process too) in front; the URL to call is printed, and every child is stopped
// on SIGINT/SIGTERM. Children are real processes so that a node can be killed (kill -9) and the
// swarm keeps serving through the replicas.

import type { ChildProcess } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
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
  readonly url: string;
  readonly nodes: readonly ChildNode[];
  readonly gateway: ChildProcess;
  readonly placementPath: string;
  stop(): Promise<void>;
}

export async function swarmUp(cfg: SwarmConfig, init: SwarmUpInit): Promise<RunningSwarm> {
  const plan = planFromConfig(cfg, init.regions, init.nodesPerRegion);
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
        String(init.gatewayPort),
        "--region",
        region,
        ...(init.modelPath ? ["--model", init.modelPath] : []),
      ],
      init.configPath,
      (line) => init.log?.(`[gateway] ${line}`),
    );
    return {
      url: String(event.url),
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
