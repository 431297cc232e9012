// The gateway process (`moe-swarm gateway`): the model's trunk with a RemoteExpertHost as its
// ExpertHost — so each MoE layer's tokens go to the expert nodes, all experts of a layer
// concurrently (the MoE layer calls them with Promise.all) — and the OpenAI-compatible HTTP API
// in front. Ready (GET /readyz) when every expert has at least one healthy replica.

import type { SwarmConfig } from "../config/schema.ts";
import { modelConfigFrom } from "../model/config.ts";
import type { ExpertHost } from "../model/expert.ts";
import { MoeTransformer } from "../model/transformer.ts";
import { OnnxKernels } from "../tensor/onnx-kernels.ts";
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
  const address = await api.listen(
    init.host ?? cfg.swarm.host,
    init.port ?? cfg.swarm.gateway_port,
  );
  return {
    url: address.url,
    port: address.port,
    api,
    dispatcher,
    trunk,
    async close() {
      await api.close();
      dispatcher.close();
      await kernels?.release();
    },
  };
}
