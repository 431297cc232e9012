// The gateway process (`moe-swarm gateway`): the model's trunk with a RemoteExpertHost as its
// ExpertHost — so each MoE layer's tokens go to the expert nodes, all experts of a layer
// concurrently (the MoE layer calls them with Promise.all) — and the OpenAI-compatible HTTP API
// in front. Ready (GET /readyz) when every expert has at least one healthy replica.

import type { IncomingMessage, ServerResponse } from "node:http";
import type { SwarmConfig } from "../config/schema.ts";
import { modelConfigFrom } from "../model/config.ts";
import type { ExpertHost } from "../model/expert.ts";
import { MoeTransformer } from "../model/transformer.ts";
import { OnnxKernels } from "../tensor/onnx-kernels.ts";
import type { DispatchObserver } from "./dispatch-observer.ts";
import { ModelTextGenerator } from "./model-generator.ts";
import { loadTrunkWeights } from "./model-weights.ts";
import { type HttpRoute, OpenAiApi } from "./openai-api.ts";
import type { PlacementRegistry } from "./placement.ts";
import { regionLinksFromConfig } from "./region-links.ts";
import { RemoteExpertHost } from "./remote-expert-host.ts";

export interface GatewayInit {
  readonly placement: PlacementRegistry;
  /** Region the gateway runs in (for the emulated links); default: the global coordinator's. */
  readonly region?: string;
  readonly host?: string;
  readonly port?: number;
  /** Trained model file; without it the trunk keeps its seed initialisation (as the nodes do). */
  readonly modelPath?: string;
  readonly modelId?: string;
  readonly hedging?: boolean;
  /** Trunk kernels: onnx (onnxruntime, the default) or js (the TypeScript ops). */
  readonly trunk?: "onnx" | "js";
  /** Routes mounted before the API's (issue #8's /metrics and dashboard). */
  readonly extraRoutes?: readonly HttpRoute[];
  /** Wraps the dispatcher before the trunk uses it (issue #8's TracedExpertHost). */
  readonly wrapExpertHost?: (dispatcher: ExpertHost) => ExpertHost;
  /** Ping every node this often (0 or absent: only on /readyz and after failures). */
  readonly healthProbeIntervalMs?: number;
  /** Told about hedges, failovers and update coherence (issue #8's DispatchObserver). */
  readonly dispatchObserver?: DispatchObserver;
  /**
   * Serves the API's handler on a server of the caller's (issue #8's dashboard server, so one port
   * answers the API, the dashboard, /metrics and /live); default: the API's own server.
   */
  readonly serve?: (
    handler: (req: IncomingMessage, res: ServerResponse) => void,
    host: string,
    port: number,
  ) => Promise<ServedGateway>;
}

/** A server the caller started for the gateway (GatewayInit.serve). */
export interface ServedGateway {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

export interface RunningGateway {
  readonly url: string;
  readonly port: number;
  readonly api: OpenAiApi;
  readonly dispatcher: RemoteExpertHost;
  readonly trunk: MoeTransformer;
  close(): Promise<void>;
}

export function defaultModelId(cfg: SwarmConfig): string {
  return `moe-swarm-${cfg.profile}`;
}

export async function startGateway(cfg: SwarmConfig, init: GatewayInit): Promise<RunningGateway> {
  const region =
    init.region ?? cfg.regions.find((r) => r.role === "global_coordinator")?.code ?? "";
  const dispatcher = new RemoteExpertHost({
    registry: init.placement,
    region,
    dModel: cfg.model.d_model,
    links: regionLinksFromConfig(cfg),
    hedging: init.hedging ?? true,
    ...(init.dispatchObserver ? { observer: init.dispatchObserver } : {}),
  });
  const host = init.wrapExpertHost ? init.wrapExpertHost(dispatcher) : dispatcher;
  const kernels = (init.trunk ?? "onnx") === "onnx" ? await OnnxKernels.create(1) : null;
  const trunk = new MoeTransformer(modelConfigFrom(cfg), host, "float32", kernels);
  if (init.modelPath) await loadTrunkWeights(cfg, trunk, init.modelPath);
  const experts = trunk.expertIds();
  const ready = async () => {
    await dispatcher.probeAll();
    const healthy = new Set(
      dispatcher
        .nodeStats()
        .filter((s) => s.healthy)
        .map((s) => s.nodeId),
    );
    return experts.every((id) => init.placement.replicas(id).some((n) => healthy.has(n.nodeId)));
  };
  const api = new OpenAiApi({
    generator: new ModelTextGenerator(trunk, init.modelId ?? defaultModelId(cfg)),
    ready,
    swarmStats: () => ({ dispatch: dispatcher.counters, nodes: dispatcher.nodeStats() }),
    extraRoutes: init.extraRoutes,
  });
  const listenHost = init.host ?? cfg.swarm.host;
  const listenPort = init.port ?? cfg.swarm.gateway_port;
  let address: { readonly url: string; readonly port: number; close?: () => Promise<void> };
  try {
    address = init.serve
      ? await init.serve((req, res) => api.handle(req, res), listenHost, listenPort)
      : await api.listen(listenHost, listenPort);
  } catch (err) {
    dispatcher.close();
    await kernels?.release();
    throw err;
  }
  let probing = false;
  const probeTimer =
    init.healthProbeIntervalMs && init.healthProbeIntervalMs > 0
      ? setInterval(() => {
          if (probing) return;
          probing = true;
          dispatcher
            .probeAll()
            .catch(() => 0)
            .finally(() => {
              probing = false;
            });
        }, init.healthProbeIntervalMs)
      : undefined;
  probeTimer?.unref();
  return {
    url: address.url,
    port: address.port,
    api,
    dispatcher,
    trunk,
    async close() {
      if (probeTimer) clearInterval(probeTimer);
      await address.close?.();
      await api.close();
      dispatcher.close();
      await kernels?.release();
    },
  };
}
