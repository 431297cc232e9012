// The swarm's configuration schema. Keys mirror the YAML/HCL blocks of the spec
// (../shared/spec/000_711fbba0f4f788d6.txt) so that an operator can read one beside the other;
// keys the spec does not name (model dimensions, ports, the emulated latency matrix) are ours and
// documented in config/swarm.example.yaml. Every object is strict: an unknown key is an error.
//
// What each spec value means in this implementation is in ARCHITECTURE.md §1: e.g.
// `quantum_superposition` routing is Born-rule routing (p_i = a_i² / Σ a_j²), `BB84` key
// distribution is realised as ML-KEM-768 pre-shared keys, `homomorphic_seal` as envelope
// encryption (AES-256-GCM data key wrapped with ML-KEM-768).

import { z } from "zod";
import {
  parseBitRate,
  parseByteSize,
  parseCpuQuantity,
  parseDuration,
  parseFrequency,
  parseRatePerTime,
  parseThreshold,
} from "./units.ts";

/** Builds a string schema that parses with `parse` and reports `expected` when that fails. */
function unitString<T>(parse: (text: string) => T | undefined, expected: string) {
  return z.string().transform((text, ctx) => {
    const value = parse(text);
    if (value === undefined) {
      ctx.addIssue({
        code: "custom",
        message: `expected ${expected}; got ${JSON.stringify(text)}`,
      });
      return z.NEVER;
    }
    return value;
  });
}

const duration = unitString(
  parseDuration,
  'a duration like "50ms", "5m", "24h", "7d" or "unlimited"',
);
const finiteDuration = unitString((t) => {
  const d = parseDuration(t);
  return d && Number.isFinite(d.seconds) ? d : undefined;
}, 'a duration like "50ms", "5m", "24h"');
const frequency = unitString(parseFrequency, 'a cadence like "every_1000_steps" or "30m"');
const byteSize = unitString(parseByteSize, 'a size like "4MB", "512KiB" or "4Gi"');
const bitRate = unitString(parseBitRate, 'a bit rate like "10Mbps"');
const ratePerTime = unitString(parseRatePerTime, 'a rate like "10%/h"');
const threshold = unitString(parseThreshold, 'a bound like "< 10%", "< 10ms" or "> 0.1"');
const cpuQuantity = unitString((t) => {
  const cores = parseCpuQuantity(t);
  return cores === undefined ? undefined : { cores, text: t };
}, 'a CPU quantity like "2000m" or "2"');

const ratio = z.number().min(0).max(1);
const positiveInt = z.number().int().min(1);

/** Region codes are Fly.io's three-letter airport codes. */
export const regionCode = z.string().regex(/^[A-Z]{3}$/, 'a three-letter region code like "ORD"');

const ipv4Pattern = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const ipv4 = z.string().regex(ipv4Pattern, 'an IPv4 address like "10.1.0.1"');
const cidr = z.string().refine(
  (t) => {
    const [ip, bits, ...rest] = t.split("/");
    return (
      rest.length === 0 && ipv4Pattern.test(ip ?? "") && /^(\d|[12]\d|3[0-2])$/.test(bits ?? "")
    );
  },
  { message: 'expected an IPv4 CIDR like "10.1.0.0/16"' },
);

export const gpuTypes = ["a10", "l40s", "a100-80gb"] as const;
export const activations = ["parallel", "selective", "sequential"] as const;

// ---- Expert Distribution Topology -------------------------------------------------------------

export const hierarchicalLayer = z.strictObject({
  name: z.string().min(1),
  /** The tier's expert count E (the spec's number); each expert has `entanglement_pairs` replicas. */
  experts_per_region: positiveInt,
  gpu_type: z.enum(gpuTypes),
  activation: z.enum(activations),
  /** Transformer blocks in this tier; each block's FFN is an MoE layer with the tier's experts. */
  blocks: positiveInt.default(1),
  /** Hidden width of each expert's FFN. */
  expert_hidden: positiveInt,
  /** parallel: experts per token; selective / sequential: the max-k bound on the set. */
  top_k: positiveInt.default(2),
  /** Tokens an expert accepts per batch = capacity_factor · tokens · k / E; the rest are dropped. */
  capacity_factor: z.number().min(0.1).max(64).default(1.25),
});

export const routingStrategy = z.strictObject({
  type: z.enum(["quantum_superposition"]),
  collapse_threshold: z.number().gt(0).max(1),
  entanglement_pairs: positiveInt,
  load_balance_loss_weight: z.number().min(0).default(0.01),
  z_loss_weight: z.number().min(0).default(0.001),
  superposition_cache: z
    .strictObject({
      entries: z.number().int().min(0).default(4096),
      quantization_bits: z.number().int().min(1).max(16).default(8),
    })
    .default({ entries: 4096, quantization_bits: 8 }),
});

export const expertTopology = z.strictObject({
  hierarchical_layers: z.array(hierarchicalLayer).min(1),
  routing_strategy: routingStrategy,
});

// ---- Model dimensions (ours) ------------------------------------------------------------------

export const model = z.strictObject({
  d_model: positiveInt,
  n_heads: positiveInt,
  context_length: positiveInt,
  seed: z.number().int().min(0).default(1337),
});

// ---- Regions and the Quantum-Resistant Consensus Layer -----------------------------------------

export const region = z.strictObject({
  code: regionCode,
  role: z.enum(["global_coordinator", "regional_coordinator"]),
  /** Which `wireguard_mesh.topology.regions` entry this region's machines live in. */
  mesh_region: z.string().min(1),
});

export const consensus = z.strictObject({
  /** Label of `swarm_consensus_rounds{algorithm}`; the protocol is HotStuff-family with 2-chain commit. */
  algorithm: z.enum(["hotstuff_2chain"]),
  signature: z.enum(["ml-dsa-65"]),
  key_exchange: z.enum(["ml-kem-768+x25519"]),
  /** Base of the pacemaker's exponential view timeout. */
  view_timeout: finiteDuration,
  /** Links rekey every epoch. */
  key_epoch: finiteDuration,
  max_batch: positiveInt.default(256),
});

// ---- Data Flow: spiking gradient flow and gradient compression ---------------------------------

export const gradientFlow = z.strictObject({
  /** |residual| above this sends a ±threshold spike (error-feedback threshold coding). */
  spike_threshold: z.number().gt(0),
  /** Minimum steps between two spikes of one coordinate. */
  refractory_period: z.number().int().min(0),
});

export const gradientCompression = z.strictObject({
  /** Fraction of spectral energy kept by the low-rank (PowerSGD) path. */
  svd_threshold: ratio,
  /** Above this fraction of near-zero entries a gradient goes the sparse (top-k) path. */
  sparsity_threshold: ratio,
});

// ---- Network: WireGuard mesh and Istio ----------------------------------------------------------

export const wireguardMesh = z.strictObject({
  name: z.string().min(1),
  quantum_key_distribution: z.strictObject({
    enabled: z.boolean(),
    /** BB84 needs a quantum optical link; it is realised as ML-KEM-768 pre-shared keys. */
    algorithm: z.enum(["BB84", "ml-kem-768"]),
    key_rate: bitRate,
  }),
  key_rotation: finiteDuration,
  topology: z.strictObject({
    type: z.enum(["full_mesh_with_shortcuts", "full_mesh", "hub_and_spoke"]),
    shortcut_threshold: finiteDuration,
    regions: z.record(
      z.string().regex(/^[a-z][a-z0-9-]*$/, "a lowercase mesh region name like us-east"),
      z.strictObject({ cidr, gateway: ipv4 }),
    ),
  }),
});

export const serviceMesh = z.strictObject({
  apiVersion: z.literal("install.istio.io/v1alpha1"),
  kind: z.literal("IstioOperator"),
  metadata: z.strictObject({ name: z.string().min(1) }),
  spec: z.strictObject({
    values: z.strictObject({
      pilot: z.strictObject({
        env: z.record(z.string(), z.string()),
      }),
      global: z.strictObject({
        meshID: z.string().min(1),
        multiCluster: z.strictObject({ clusterName: z.string().min(1) }),
        network: z.string().min(1),
      }),
    }),
    components: z.strictObject({
      pilot: z.strictObject({
        k8s: z.strictObject({
          resources: z.strictObject({
            requests: z.strictObject({ cpu: cpuQuantity, memory: byteSize }),
          }),
        }),
      }),
    }),
  }),
});

// ---- Storage: checkpoints ----------------------------------------------------------------------

export const checkpointLevel = z.strictObject({
  name: z.enum(["hot", "warm", "cold"]),
  storage: z.enum(["fly_volume_ssd", "fly_volume_hdd", "ipfs_with_filecoin"]),
  retention: duration,
  compression: z.enum(["none", "zstd_level_9", "brotli_level_11"]).default("none"),
  /** homomorphic_seal: envelope encryption (AES-256-GCM data key wrapped with ML-KEM-768). */
  encryption: z.enum(["none", "homomorphic_seal"]).default("none"),
  /** Where this tier's blocks live on the local machine (ours). */
  path: z.string().min(1).optional(),
});

export const checkpointStrategy = z.strictObject({
  frequency,
  levels: z.array(checkpointLevel).min(1),
  deduplication: z.strictObject({
    algorithm: z.enum(["content_defined_chunking"]),
    /** Average chunk size of FastCDC; min and max are avg/4 and avg·4. */
    chunk_size: byteSize,
    similarity_threshold: ratio,
  }),
});

// ---- Monitoring and Observability --------------------------------------------------------------

export const metricsExporter = z.discriminatedUnion("type", [
  z.strictObject({
    type: z.literal("prometheus"),
    /** Pushgateway URL; the pull endpoint `/metrics` is always served. */
    endpoint: z.url().optional(),
    push_interval: finiteDuration.optional(),
  }),
  z.strictObject({
    /** The live WebSocket metrics feed of the dashboard. */
    type: z.literal("quantum_metrics"),
    endpoint: z.string().min(1),
    encoding: z.enum(["bell_state_tomography", "json"]),
  }),
]);

export const customMetric = z.strictObject({
  name: z.string().regex(/^[a-zA-Z_:][a-zA-Z0-9_:]*$/, "a Prometheus metric name"),
  type: z.enum(["histogram", "gauge", "counter"]),
  unit: z
    .enum(["nanoseconds", "microseconds", "milliseconds", "seconds", "ratio", "bytes"])
    .optional(),
  buckets: z.array(z.number().gt(0)).min(1).optional(),
  labels: z
    .array(z.string().regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, "a Prometheus label name"))
    .optional(),
});

export const metrics = z.strictObject({
  exporters: z.array(metricsExporter),
  custom_metrics: z.array(customMetric),
});

// ---- Deployment pipeline -----------------------------------------------------------------------

export const canaryStage = z.strictObject({
  percentage: z.number().gt(0).max(100),
  duration: finiteDuration,
  success_criteria: z.strictObject({
    spike_rate_deviation: threshold.optional(),
    loss_increase: threshold.optional(),
    p99_latency_increase: threshold.optional(),
    all_metrics_stable: z.boolean().optional(),
  }),
});

export const canaryDeployment = z.strictObject({
  strategy: z.enum(["neuromorphic_feedback"]),
  stages: z.array(canaryStage).min(1),
  rollback_triggers: z.array(
    z.strictObject({
      metric: z.enum([
        "quantum_decoherence_rate",
        "consensus_failure_rate",
        "error_rate",
        "loss_increase",
      ]),
      threshold,
    }),
  ),
});

// ---- Scaling and cost --------------------------------------------------------------------------

export const autoscaling = z.strictObject({
  /** NeuromorphicScaler: a leaky integrate-and-fire reservoir with a trained linear readout. */
  predictor: z.enum(["spiking_reservoir", "holt_winters", "last_value"]),
  interval: finiteDuration,
  cooldown: finiteDuration,
  min_nodes_per_region: z.number().int().min(0),
  max_nodes_per_region: positiveInt,
  migration_strategy: z.enum(["graceful_drain"]),
});

export const regionSelection = z.strictObject({
  /** Softmax temperature over region fitness. */
  temperature: z.number().gt(0),
  /** Regions added in other failure domains ("entangled regions" in the spec). */
  failover_regions: z.number().int().min(0),
});

export const spotArbitrage = z.strictObject({
  objective: z.enum(["minimize_cost"]),
  prediction_horizon: finiteDuration,
  /** quantum_annealing is realised as simulated annealing, checked against an exact MIP solver. */
  solver: z.enum(["quantum_annealing", "simulated_annealing", "mip"]),
  constraints: z.strictObject({
    max_migration_rate: ratePerTime,
    min_availability: ratio,
    max_latency: finiteDuration,
  }),
});

// ---- Local emulation and ports (ours) ----------------------------------------------------------

export const swarm = z.strictObject({
  host: z.string().min(1),
  gateway_port: z.number().int().min(0).max(65535),
  nodes_per_region: positiveInt,
  /** Where models, checkpoints and logs go. */
  data_dir: z.string().min(1),
  emulation: z.strictObject({
    enabled: z.boolean(),
    /** One-way delay between two regions, keyed "AAA-BBB"; symmetric. */
    one_way_latency: z.record(
      z.string().regex(/^[A-Z]{3}-[A-Z]{3}$/, 'a pair like "ORD-IAD"'),
      finiteDuration,
    ),
    bandwidth: bitRate.optional(),
  }),
});

// ---- The whole file ----------------------------------------------------------------------------

export const profiles = ["local", "production"] as const;
export type Profile = (typeof profiles)[number];

export const swarmConfig = z.strictObject({
  profile: z.enum(profiles),
  model,
  expert_topology: expertTopology,
  regions: z.array(region).min(1),
  consensus,
  gradient_flow: gradientFlow,
  gradient_compression: gradientCompression,
  wireguard_mesh: wireguardMesh,
  service_mesh: serviceMesh,
  checkpoint_strategy: checkpointStrategy,
  metrics,
  canary_deployment: canaryDeployment,
  autoscaling,
  region_selection: regionSelection,
  spot_arbitrage: spotArbitrage,
  swarm,
});

export type SwarmConfig = z.output<typeof swarmConfig>;
export type HierarchicalLayer = z.output<typeof hierarchicalLayer>;
export type CheckpointLevel = z.output<typeof checkpointLevel>;

function ipv4ToInt(ip: string): number {
  return ip.split(".").reduce((acc, octet) => acc * 256 + Number(octet), 0);
}

function cidrContains(block: string, ip: string): boolean {
  const [base, bitsText] = block.split("/");
  const bits = Number(bitsText);
  const size = 2 ** (32 - bits);
  const start = Math.floor(ipv4ToInt(base as string) / size) * size;
  const addr = ipv4ToInt(ip);
  return addr >= start && addr < start + size;
}

/** The schema plus the checks that relate keys to each other; each error names the key to change. */
export const swarmConfigChecked = swarmConfig.superRefine((cfg, ctx) => {
  const issue = (path: (string | number)[], message: string) =>
    ctx.addIssue({ code: "custom", path, message });

  if (cfg.model.d_model % cfg.model.n_heads !== 0) {
    issue(
      ["model", "n_heads"],
      `expected a divisor of model.d_model (${cfg.model.d_model}); got ${cfg.model.n_heads}`,
    );
  }

  cfg.expert_topology.hierarchical_layers.forEach((layer, i) => {
    if (layer.top_k > layer.experts_per_region) {
      issue(
        ["expert_topology", "hierarchical_layers", i, "top_k"],
        `expected at most experts_per_region (${layer.experts_per_region}); got ${layer.top_k}`,
      );
    }
  });

  const codes = cfg.regions.map((r) => r.code);
  cfg.regions.forEach((r, i) => {
    if (codes.indexOf(r.code) !== i)
      issue(["regions", i, "code"], `expected a unique region code; got "${r.code}" twice`);
    const mesh = cfg.wireguard_mesh.topology.regions[r.mesh_region];
    if (!mesh) {
      const known = Object.keys(cfg.wireguard_mesh.topology.regions).join(", ");
      issue(
        ["regions", i, "mesh_region"],
        `expected one of the wireguard_mesh.topology.regions (${known}); got "${r.mesh_region}"`,
      );
    }
  });
  const globals = cfg.regions.filter((r) => r.role === "global_coordinator").length;
  if (globals !== 1)
    issue(["regions"], `expected exactly one region with role global_coordinator; got ${globals}`);

  const replicas = cfg.expert_topology.routing_strategy.entanglement_pairs;
  if (replicas > cfg.regions.length) {
    issue(
      ["expert_topology", "routing_strategy", "entanglement_pairs"],
      `expected at most the number of regions (${cfg.regions.length}), since replicas live in distinct regions; got ${replicas}`,
    );
  }

  for (const [name, mesh] of Object.entries(cfg.wireguard_mesh.topology.regions)) {
    if (!cidrContains(mesh.cidr, mesh.gateway)) {
      issue(
        ["wireguard_mesh", "topology", "regions", name, "gateway"],
        `expected an address inside ${mesh.cidr}; got "${mesh.gateway}"`,
      );
    }
  }

  const levelNames = cfg.checkpoint_strategy.levels.map((l) => l.name);
  cfg.checkpoint_strategy.levels.forEach((l, i) => {
    if (levelNames.indexOf(l.name) !== i)
      issue(
        ["checkpoint_strategy", "levels", i, "name"],
        `expected a unique level name; got "${l.name}" twice`,
      );
  });

  let previous = 0;
  cfg.canary_deployment.stages.forEach((stage, i) => {
    if (stage.percentage <= previous) {
      issue(
        ["canary_deployment", "stages", i, "percentage"],
        `expected more than the previous stage's ${previous}; got ${stage.percentage}`,
      );
    }
    previous = stage.percentage;
  });

  if (cfg.autoscaling.min_nodes_per_region > cfg.autoscaling.max_nodes_per_region) {
    issue(
      ["autoscaling", "min_nodes_per_region"],
      `expected at most max_nodes_per_region (${cfg.autoscaling.max_nodes_per_region}); got ${cfg.autoscaling.min_nodes_per_region}`,
    );
  }

  if (cfg.swarm.emulation.enabled) {
    const latency = cfg.swarm.emulation.one_way_latency;
    for (const key of Object.keys(latency)) {
      const [a, b] = key.split("-") as [string, string];
      for (const code of [a, b]) {
        if (!codes.includes(code))
          issue(
            ["swarm", "emulation", "one_way_latency", key],
            `expected a pair of configured regions (${codes.join(", ")}); got "${code}"`,
          );
      }
    }
    for (let i = 0; i < codes.length; i++) {
      for (let j = i + 1; j < codes.length; j++) {
        const a = codes[i] as string;
        const b = codes[j] as string;
        if (!(`${a}-${b}` in latency) && !(`${b}-${a}` in latency)) {
          issue(
            ["swarm", "emulation", "one_way_latency"],
            `expected a delay for every pair of regions; "${a}-${b}" is missing`,
          );
        }
      }
    }
  }
});

/** One-way delay between two regions in seconds (0 within a region). */
export function oneWayLatencySeconds(cfg: SwarmConfig, a: string, b: string): number {
  if (a === b || !cfg.swarm.emulation.enabled) return 0;
  const table = cfg.swarm.emulation.one_way_latency;
  const d = table[`${a}-${b}`] ?? table[`${b}-${a}`];
  if (!d) throw new RangeError(`no one-way latency configured between ${a} and ${b}`);
  return d.seconds;
}
