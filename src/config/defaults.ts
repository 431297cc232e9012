// Embedded defaults, in the same raw form as the YAML file (strings with units), so that defaults
// go through exactly the same parser and checks as a user's file.
//
// `production` is the spec's values. `local` is the same topology scaled down (experts per tier
// divided by 8, keeping 128:64:16 = 8:4:1, and small model dimensions) so that the whole swarm
// runs and trains on one 2-core machine in minutes.

import type { Profile } from "./schema.ts";

export type RawConfig = { [key: string]: unknown };

/** One-way delays between the spec's regions: half of typical public-cloud RTTs between the metros. */
const oneWayLatency = {
  "ORD-IAD": "9ms",
  "ORD-SJC": "23ms",
  "ORD-AMS": "48ms",
  "ORD-SYD": "95ms",
  "IAD-SJC": "31ms",
  "IAD-AMS": "40ms",
  "IAD-SYD": "103ms",
  "SJC-AMS": "72ms",
  "SJC-SYD": "75ms",
  "AMS-SYD": "138ms",
};

function shared(): RawConfig {
  return {
    regions: [
      { code: "ORD", role: "global_coordinator", mesh_region: "us-east" },
      { code: "IAD", role: "regional_coordinator", mesh_region: "us-east" },
      { code: "SJC", role: "regional_coordinator", mesh_region: "us-west" },
      { code: "AMS", role: "regional_coordinator", mesh_region: "europe" },
      { code: "SYD", role: "regional_coordinator", mesh_region: "asia-pac" },
    ],
    consensus: {
      algorithm: "hotstuff_2chain",
      signature: "ml-dsa-65",
      key_exchange: "ml-kem-768+x25519",
      view_timeout: "1s",
      key_epoch: "1h",
      max_batch: 256,
    },
    gradient_flow: { spike_threshold: 0.001, refractory_period: 0 },
    gradient_compression: { svd_threshold: 0.9, sparsity_threshold: 0.9 },
    wireguard_mesh: {
      name: "moe-swarm-mesh",
      quantum_key_distribution: { enabled: true, algorithm: "BB84", key_rate: "10Mbps" },
      key_rotation: "2m",
      topology: {
        type: "full_mesh_with_shortcuts",
        shortcut_threshold: "50ms",
        regions: {
          "us-east": { cidr: "10.1.0.0/16", gateway: "10.1.0.1" },
          "us-west": { cidr: "10.2.0.0/16", gateway: "10.2.0.1" },
          europe: { cidr: "10.3.0.0/16", gateway: "10.3.0.1" },
          "asia-pac": { cidr: "10.4.0.0/16", gateway: "10.4.0.1" },
        },
      },
    },
    service_mesh: {
      apiVersion: "install.istio.io/v1alpha1",
      kind: "IstioOperator",
      metadata: { name: "moe-swarm-mesh" },
      spec: {
        values: {
          pilot: { env: { PILOT_ENABLE_QUANTUM_MTLS: "true" } },
          global: {
            meshID: "moe-swarm",
            multiCluster: { clusterName: "fly-gpu-cluster" },
            network: "fly-wireguard",
          },
        },
        components: {
          pilot: { k8s: { resources: { requests: { cpu: "2000m", memory: "4Gi" } } } },
        },
      },
    },
    checkpoint_strategy: {
      frequency: "every_1000_steps",
      levels: [
        { name: "hot", storage: "fly_volume_ssd", retention: "24h" },
        { name: "warm", storage: "fly_volume_hdd", retention: "7d", compression: "zstd_level_9" },
        {
          name: "cold",
          storage: "ipfs_with_filecoin",
          retention: "unlimited",
          compression: "brotli_level_11",
          encryption: "homomorphic_seal",
        },
      ],
      deduplication: {
        algorithm: "content_defined_chunking",
        chunk_size: "4MB",
        similarity_threshold: 0.8,
      },
    },
    metrics: {
      exporters: [
        { type: "prometheus", endpoint: "https://metrics.fly.io/v1/push" },
        {
          type: "quantum_metrics",
          endpoint: "wss://quantum.fly.io/metrics",
          encoding: "bell_state_tomography",
        },
      ],
      custom_metrics: [
        {
          name: "expert_coherence_time",
          type: "histogram",
          unit: "nanoseconds",
          buckets: [10, 50, 100, 500, 1000, 5000, 10000],
        },
        { name: "gradient_entanglement_fidelity", type: "gauge", unit: "ratio" },
        {
          name: "swarm_consensus_rounds",
          type: "counter",
          labels: ["region", "gpu_type", "algorithm"],
        },
      ],
    },
    canary_deployment: {
      strategy: "neuromorphic_feedback",
      stages: [
        {
          percentage: 1,
          duration: "5m",
          success_criteria: { spike_rate_deviation: "< 10%", loss_increase: "< 0.1%" },
        },
        {
          percentage: 10,
          duration: "30m",
          success_criteria: {
            spike_rate_deviation: "< 5%",
            loss_increase: "< 0.05%",
            p99_latency_increase: "< 10ms",
          },
        },
        { percentage: 50, duration: "2h", success_criteria: { all_metrics_stable: true } },
      ],
      rollback_triggers: [
        { metric: "quantum_decoherence_rate", threshold: "> 0.1" },
        { metric: "consensus_failure_rate", threshold: "> 0.001" },
      ],
    },
    autoscaling: {
      predictor: "spiking_reservoir",
      interval: "30s",
      cooldown: "5m",
      min_nodes_per_region: 1,
      max_nodes_per_region: 8,
      migration_strategy: "graceful_drain",
    },
    region_selection: { temperature: 0.5, failover_regions: 2 },
    spot_arbitrage: {
      objective: "minimize_cost",
      prediction_horizon: "24h",
      solver: "quantum_annealing",
      constraints: { max_migration_rate: "10%/h", min_availability: 0.999, max_latency: "100ms" },
    },
  };
}

function production(): RawConfig {
  return {
    profile: "production",
    model: { d_model: 1024, n_heads: 16, context_length: 2048, seed: 1337 },
    expert_topology: {
      hierarchical_layers: [
        {
          name: "Sensory Cortex",
          experts_per_region: 128,
          gpu_type: "a10",
          activation: "parallel",
          blocks: 4,
          expert_hidden: 4096,
          top_k: 2,
          capacity_factor: 1.25,
        },
        {
          name: "Association Areas",
          experts_per_region: 64,
          gpu_type: "l40s",
          activation: "selective",
          blocks: 4,
          expert_hidden: 4096,
          top_k: 4,
          capacity_factor: 1.25,
        },
        {
          name: "Prefrontal Cortex",
          experts_per_region: 16,
          gpu_type: "a100-80gb",
          activation: "sequential",
          blocks: 4,
          expert_hidden: 4096,
          top_k: 4,
          capacity_factor: 1.25,
        },
      ],
      routing_strategy: {
        type: "quantum_superposition",
        collapse_threshold: 0.85,
        entanglement_pairs: 3,
        load_balance_loss_weight: 0.01,
        z_loss_weight: 0.001,
        superposition_cache: { entries: 65536, quantization_bits: 8 },
      },
    },
    ...shared(),
    swarm: {
      host: "0.0.0.0",
      gateway_port: 8080,
      nodes_per_region: 4,
      data_dir: "/data/moe-swarm",
      emulation: { enabled: false, one_way_latency: oneWayLatency },
    },
  };
}

function local(): RawConfig {
  // Locally nothing leaves the machine: Prometheus is scraped from /metrics (no push) and the live
  // feed is the gateway's own WebSocket.
  const base = shared();
  base.metrics = {
    ...(base.metrics as RawConfig),
    exporters: [
      { type: "prometheus" },
      { type: "quantum_metrics", endpoint: "/v1/live", encoding: "json" },
    ],
  };
  return {
    profile: "local",
    model: { d_model: 64, n_heads: 4, context_length: 128, seed: 1337 },
    expert_topology: {
      hierarchical_layers: [
        {
          name: "Sensory Cortex",
          experts_per_region: 16,
          gpu_type: "a10",
          activation: "parallel",
          blocks: 1,
          expert_hidden: 128,
          top_k: 2,
          capacity_factor: 1.25,
        },
        {
          name: "Association Areas",
          experts_per_region: 8,
          gpu_type: "l40s",
          activation: "selective",
          blocks: 1,
          expert_hidden: 128,
          top_k: 4,
          capacity_factor: 1.25,
        },
        {
          name: "Prefrontal Cortex",
          experts_per_region: 2,
          gpu_type: "a100-80gb",
          activation: "sequential",
          blocks: 1,
          expert_hidden: 128,
          top_k: 2,
          capacity_factor: 1.25,
        },
      ],
      routing_strategy: {
        type: "quantum_superposition",
        collapse_threshold: 0.85,
        entanglement_pairs: 3,
        load_balance_loss_weight: 0.01,
        z_loss_weight: 0.001,
        superposition_cache: { entries: 4096, quantization_bits: 8 },
      },
    },
    ...base,
    swarm: {
      host: "127.0.0.1",
      gateway_port: 8080,
      nodes_per_region: 1,
      data_dir: "./data",
      emulation: { enabled: true, one_way_latency: oneWayLatency },
    },
  };
}

export function profileDefaults(profile: Profile): RawConfig {
  return profile === "production" ? production() : local();
}
