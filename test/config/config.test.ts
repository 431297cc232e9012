import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { parse } from "yaml";
import {
  ConfigError,
  didYouMean,
  loadConfig,
  loadConfigFile,
  parseConfigText,
  renderConfig,
  resolveConfig,
} from "../../src/config/load.ts";
import { oneWayLatencySeconds } from "../../src/config/schema.ts";

const examplePath = "config/swarm.example.yaml";

/** Asserts that `text` is rejected and that one problem names `key` and contains every `parts`. */
function rejects(text: string, key: string, ...parts: string[]): void {
  assert.throws(
    () => parseConfigText(text, "test.yaml"),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
      const problem = err.problems.find((p) => p.key === key);
      assert.ok(problem, `no problem names ${key}; got:\n${err.message}`);
      for (const part of parts)
        assert.ok(problem.message.includes(part), `"${problem.message}" lacks "${part}"`);
      assert.ok(err.message.includes(key), "the message names the key");
      return true;
    },
  );
}

describe("config: example file", () => {
  const example = loadConfigFile(examplePath);

  it("validates and round-trips through `config show`", () => {
    const again = parseConfigText(renderConfig(example.config), "rendered");
    assert.deepEqual(again.config, example.config);
  });

  it("is exactly the production profile's defaults", () => {
    assert.deepEqual(example.config, resolveConfig({ profile: "production" }).config);
  });

  it("reproduces the spec's values", () => {
    const c = example.config;
    const tiers = c.expert_topology.hierarchical_layers;
    assert.deepEqual(
      tiers.map((t) => [t.name, t.experts_per_region, t.gpu_type, t.activation]),
      [
        ["Sensory Cortex", 128, "a10", "parallel"],
        ["Association Areas", 64, "l40s", "selective"],
        ["Prefrontal Cortex", 16, "a100-80gb", "sequential"],
      ],
    );
    assert.deepEqual(
      {
        ...c.expert_topology.routing_strategy,
        superposition_cache: undefined,
        load_balance_loss_weight: undefined,
        z_loss_weight: undefined,
      },
      {
        type: "quantum_superposition",
        collapse_threshold: 0.85,
        entanglement_pairs: 3,
        superposition_cache: undefined,
        load_balance_loss_weight: undefined,
        z_loss_weight: undefined,
      },
    );
    assert.deepEqual(
      c.regions.map((r) => [r.code, r.role]),
      [
        ["ORD", "global_coordinator"],
        ["IAD", "regional_coordinator"],
        ["SJC", "regional_coordinator"],
        ["AMS", "regional_coordinator"],
        ["SYD", "regional_coordinator"],
      ],
    );
    const mesh = c.wireguard_mesh;
    assert.equal(mesh.name, "moe-swarm-mesh");
    assert.equal(mesh.quantum_key_distribution.key_rate.bitsPerSecond, 10e6);
    assert.equal(mesh.topology.shortcut_threshold.seconds, 0.05);
    assert.deepEqual(mesh.topology.regions, {
      "us-east": { cidr: "10.1.0.0/16", gateway: "10.1.0.1" },
      "us-west": { cidr: "10.2.0.0/16", gateway: "10.2.0.1" },
      europe: { cidr: "10.3.0.0/16", gateway: "10.3.0.1" },
      "asia-pac": { cidr: "10.4.0.0/16", gateway: "10.4.0.1" },
    });
    const ck = c.checkpoint_strategy;
    assert.deepEqual(ck.frequency, { kind: "steps", steps: 1000, text: "every_1000_steps" });
    assert.deepEqual(
      ck.levels.map((l) => [l.name, l.storage, l.retention.seconds, l.compression, l.encryption]),
      [
        ["hot", "fly_volume_ssd", 86400, "none", "none"],
        ["warm", "fly_volume_hdd", 604800, "zstd_level_9", "none"],
        [
          "cold",
          "ipfs_with_filecoin",
          Number.POSITIVE_INFINITY,
          "brotli_level_11",
          "homomorphic_seal",
        ],
      ],
    );
    assert.equal(ck.deduplication.chunk_size.bytes, 4_000_000);
    assert.equal(ck.deduplication.similarity_threshold, 0.8);
    assert.deepEqual(
      c.metrics.custom_metrics.find((m) => m.name === "expert_coherence_time")?.buckets,
      [10, 50, 100, 500, 1000, 5000, 10000],
    );
    assert.deepEqual(
      c.metrics.custom_metrics.find((m) => m.name === "swarm_consensus_rounds")?.labels,
      ["region", "gpu_type", "algorithm"],
    );
    assert.equal(
      c.metrics.custom_metrics.find((m) => m.name === "gradient_entanglement_fidelity")?.type,
      "gauge",
    );
    const stages = c.canary_deployment.stages;
    assert.deepEqual(
      stages.map((s) => [s.percentage, s.duration.seconds]),
      [
        [1, 300],
        [10, 1800],
        [50, 7200],
      ],
    );
    assert.equal(stages[0]?.success_criteria.loss_increase?.value, 0.001);
    assert.equal(stages[1]?.success_criteria.p99_latency_increase?.value, 0.01);
    assert.equal(stages[2]?.success_criteria.all_metrics_stable, true);
    assert.deepEqual(
      c.canary_deployment.rollback_triggers.map((t) => [
        t.metric,
        t.threshold.op,
        t.threshold.value,
      ]),
      [
        ["quantum_decoherence_rate", ">", 0.1],
        ["consensus_failure_rate", ">", 0.001],
      ],
    );
    const k = c.spot_arbitrage.constraints;
    assert.equal(k.max_migration_rate.ratio, 0.1);
    assert.equal(k.max_migration_rate.perSeconds, 3600);
    assert.equal(k.min_availability, 0.999);
    assert.equal(k.max_latency.seconds, 0.1);
    assert.equal(c.service_mesh.spec.components.pilot.k8s.resources.requests.cpu.cores, 2);
    assert.equal(
      c.service_mesh.spec.components.pilot.k8s.resources.requests.memory.bytes,
      4 * 1024 ** 3,
    );
  });

  it("contains every key of the spec's YAML and HCL blocks", () => {
    const raw = parse(readFileSync(examplePath, "utf8")) as Record<string, unknown>;
    const specKeys = [
      "expert_topology.hierarchical_layers.0.name",
      "expert_topology.hierarchical_layers.0.experts_per_region",
      "expert_topology.hierarchical_layers.0.gpu_type",
      "expert_topology.hierarchical_layers.0.activation",
      "expert_topology.routing_strategy.type",
      "expert_topology.routing_strategy.collapse_threshold",
      "expert_topology.routing_strategy.entanglement_pairs",
      "wireguard_mesh.name",
      "wireguard_mesh.quantum_key_distribution.enabled",
      "wireguard_mesh.quantum_key_distribution.algorithm",
      "wireguard_mesh.quantum_key_distribution.key_rate",
      "wireguard_mesh.topology.type",
      "wireguard_mesh.topology.shortcut_threshold",
      "wireguard_mesh.topology.regions.us-east.cidr",
      "wireguard_mesh.topology.regions.asia-pac.gateway",
      "service_mesh.apiVersion",
      "service_mesh.kind",
      "service_mesh.metadata.name",
      "service_mesh.spec.values.pilot.env.PILOT_ENABLE_QUANTUM_MTLS",
      "service_mesh.spec.values.global.meshID",
      "service_mesh.spec.values.global.multiCluster.clusterName",
      "service_mesh.spec.values.global.network",
      "service_mesh.spec.components.pilot.k8s.resources.requests.cpu",
      "service_mesh.spec.components.pilot.k8s.resources.requests.memory",
      "checkpoint_strategy.frequency",
      "checkpoint_strategy.levels.0.name",
      "checkpoint_strategy.levels.0.storage",
      "checkpoint_strategy.levels.0.retention",
      "checkpoint_strategy.levels.1.compression",
      "checkpoint_strategy.levels.2.encryption",
      "checkpoint_strategy.deduplication.algorithm",
      "checkpoint_strategy.deduplication.chunk_size",
      "checkpoint_strategy.deduplication.similarity_threshold",
      "metrics.exporters.0.type",
      "metrics.exporters.0.endpoint",
      "metrics.exporters.1.encoding",
      "metrics.custom_metrics.0.name",
      "metrics.custom_metrics.0.type",
      "metrics.custom_metrics.0.unit",
      "metrics.custom_metrics.0.buckets",
      "metrics.custom_metrics.2.labels",
      "canary_deployment.strategy",
      "canary_deployment.stages.0.percentage",
      "canary_deployment.stages.0.duration",
      "canary_deployment.stages.0.success_criteria.spike_rate_deviation",
      "canary_deployment.stages.0.success_criteria.loss_increase",
      "canary_deployment.stages.1.success_criteria.p99_latency_increase",
      "canary_deployment.stages.2.success_criteria.all_metrics_stable",
      "canary_deployment.rollback_triggers.0.metric",
      "canary_deployment.rollback_triggers.0.threshold",
      "spot_arbitrage.constraints.max_migration_rate",
      "spot_arbitrage.constraints.min_availability",
      "spot_arbitrage.constraints.max_latency",
      "gradient_flow.spike_threshold",
      "gradient_flow.refractory_period",
      "gradient_compression.svd_threshold",
      "gradient_compression.sparsity_threshold",
    ];
    for (const key of specKeys) {
      let node: unknown = raw;
      for (const segment of key.split("."))
        node = (node as Record<string, unknown> | undefined)?.[segment];
      assert.notEqual(node, undefined, `missing ${key}`);
    }
  });
});

describe("config: defaults", () => {
  it("with no file, gives a local profile that runs on one machine", () => {
    const { config } = loadConfig();
    assert.equal(config.profile, "local");
    assert.equal(config.swarm.host, "127.0.0.1");
    assert.equal(config.swarm.emulation.enabled, true);
    // Same tier structure as production, scaled down with the 8:4:1 ratio kept.
    const counts = config.expert_topology.hierarchical_layers.map((l) => l.experts_per_region);
    assert.deepEqual(
      counts.map((n) => n / (counts[2] as number)),
      [8, 4, 1],
    );
    // Nothing is pushed off the machine.
    assert.ok(
      config.metrics.exporters.every((e) => e.type !== "prometheus" || e.endpoint === undefined),
    );
  });

  it("gives the one-way latency between regions both ways", () => {
    const { config } = loadConfig();
    assert.equal(oneWayLatencySeconds(config, "ORD", "SYD"), 0.095);
    assert.equal(oneWayLatencySeconds(config, "SYD", "ORD"), 0.095);
    assert.equal(oneWayLatencySeconds(config, "AMS", "AMS"), 0);
  });

  it("lays a partial file over the defaults of its profile", () => {
    const { config } = parseConfigText(
      "profile: production\nmodel:\n  d_model: 512\n  n_heads: 8\n",
    );
    assert.equal(config.model.d_model, 512);
    assert.equal(config.model.context_length, 2048);
    assert.equal(config.expert_topology.hierarchical_layers[0]?.experts_per_region, 128);
  });

  it("accepts an empty file", () => {
    assert.equal(parseConfigText("").config.profile, "local");
  });
});

describe("config: bad input names the key", () => {
  const layers = (activation: string, gpu = "l40s") => `expert_topology:
  hierarchical_layers:
    - {name: a, experts_per_region: 4, gpu_type: a10, activation: parallel, expert_hidden: 8}
    - {name: b, experts_per_region: 4, gpu_type: ${gpu}, activation: ${activation}, expert_hidden: 8}
`;

  it("rejects an unknown activation with the allowed values", () => {
    rejects(
      layers("sideways"),
      "expert_topology.hierarchical_layers[1].activation",
      "expected one of parallel, selective, sequential",
      '"sideways"',
    );
  });

  it("rejects an unknown gpu type", () => {
    rejects(
      layers("parallel", "h100"),
      "expert_topology.hierarchical_layers[1].gpu_type",
      "a10, l40s, a100-80gb",
      '"h100"',
    );
  });

  it("rejects a misspelled key with a did-you-mean hint", () => {
    rejects(
      "expert_topology:\n  routing_strategy:\n    colapse_threshold: 0.9\n",
      "expert_topology.routing_strategy.colapse_threshold",
      'did you mean "collapse_threshold"',
    );
  });

  it("rejects an unknown top-level key", () => {
    rejects("chekpoint_strategy: {}\n", "chekpoint_strategy", 'did you mean "checkpoint_strategy"');
  });

  it("rejects collapse_threshold outside (0, 1]", () => {
    rejects(
      "expert_topology:\n  routing_strategy:\n    collapse_threshold: 0\n",
      "expert_topology.routing_strategy.collapse_threshold",
      "> 0",
      "0",
    );
    rejects(
      "expert_topology:\n  routing_strategy:\n    collapse_threshold: 1.5\n",
      "expert_topology.routing_strategy.collapse_threshold",
      "≤ 1",
    );
  });

  it("rejects entanglement_pairs below 1 and above the region count", () => {
    rejects(
      "expert_topology:\n  routing_strategy:\n    entanglement_pairs: 0\n",
      "expert_topology.routing_strategy.entanglement_pairs",
      "≥ 1",
    );
    rejects(
      "expert_topology:\n  routing_strategy:\n    entanglement_pairs: 6\n",
      "expert_topology.routing_strategy.entanglement_pairs",
      "at most the number of regions (5)",
    );
  });

  it("rejects a malformed duration", () => {
    rejects(
      "checkpoint_strategy:\n  levels:\n    - {name: hot, storage: fly_volume_ssd, retention: 24 hours}\n",
      "checkpoint_strategy.levels[0].retention",
      "expected a duration",
      '"24 hours"',
    );
  });

  it("rejects a malformed size", () => {
    rejects(
      "checkpoint_strategy:\n  deduplication:\n    chunk_size: 4 megs\n",
      "checkpoint_strategy.deduplication.chunk_size",
      "expected a size",
      '"4 megs"',
    );
  });

  it("rejects a malformed threshold", () => {
    rejects(
      "canary_deployment:\n  stages:\n    - percentage: 1\n      duration: 5m\n      success_criteria: {spike_rate_deviation: about ten}\n",
      "canary_deployment.stages[0].success_criteria.spike_rate_deviation",
      "expected a bound",
    );
  });

  it("rejects a malformed migration rate", () => {
    rejects(
      "spot_arbitrage:\n  constraints:\n    max_migration_rate: 10 percent\n",
      "spot_arbitrage.constraints.max_migration_rate",
      'like "10%/h"',
    );
  });

  it("rejects availability above 1", () => {
    rejects(
      "spot_arbitrage:\n  constraints:\n    min_availability: 99.9\n",
      "spot_arbitrage.constraints.min_availability",
      "≤ 1",
      "99.9",
    );
  });

  it("rejects a wrong type", () => {
    rejects("model:\n  d_model: wide\n", "model.d_model", "expected number", '"wide"');
    rejects("regions: ORD\n", "regions", "expected a list");
  });

  it("rejects an unknown metrics exporter type", () => {
    rejects(
      "metrics:\n  exporters:\n    - type: graphite\n",
      "metrics.exporters[0].type",
      "prometheus, quantum_metrics",
      '"graphite"',
    );
  });

  it("rejects a bad CIDR and a gateway outside its CIDR", () => {
    rejects(
      "wireguard_mesh:\n  topology:\n    regions:\n      us-east: {cidr: 10.1.0.0/40, gateway: 10.1.0.1}\n",
      "wireguard_mesh.topology.regions.us-east.cidr",
      "CIDR",
    );
    rejects(
      "wireguard_mesh:\n  topology:\n    regions:\n      us-east: {cidr: 10.1.0.0/16, gateway: 10.9.0.1}\n",
      "wireguard_mesh.topology.regions.us-east.gateway",
      "inside 10.1.0.0/16",
    );
  });

  it("rejects a region whose mesh region does not exist", () => {
    rejects(
      "regions:\n  - {code: ORD, role: global_coordinator, mesh_region: us-central}\n",
      "regions[0].mesh_region",
      "us-east",
      '"us-central"',
    );
  });

  it("rejects two global coordinators and a missing latency pair", () => {
    const text = `regions:
  - {code: ORD, role: global_coordinator, mesh_region: us-east}
  - {code: IAD, role: global_coordinator, mesh_region: us-east}
  - {code: LHR, role: regional_coordinator, mesh_region: europe}
expert_topology:
  routing_strategy: {entanglement_pairs: 2}
`;
    rejects(text, "regions", "exactly one region with role global_coordinator");
    rejects(text, "swarm.emulation.one_way_latency", '"ORD-LHR" is missing');
  });

  it("rejects heads that do not divide the model width", () => {
    rejects(
      "model:\n  d_model: 64\n  n_heads: 5\n",
      "model.n_heads",
      "divisor of model.d_model (64)",
    );
  });

  it("rejects canary stages that do not grow", () => {
    rejects(
      "canary_deployment:\n  stages:\n    - {percentage: 10, duration: 5m, success_criteria: {}}\n    - {percentage: 5, duration: 5m, success_criteria: {}}\n",
      "canary_deployment.stages[1].percentage",
      "more than the previous stage's 10",
    );
  });

  it("rejects an unknown profile", () => {
    rejects("profile: staging\n", "profile", "local, production", '"staging"');
  });

  it("reports the line of the bad key", () => {
    try {
      parseConfigText("model:\n  d_model: 64\n  n_heads: x\n", "f.yaml");
      assert.fail("accepted");
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      assert.equal(err.problems[0]?.line, 3);
      assert.match(err.message, /f\.yaml line 3/);
    }
  });

  it("rejects YAML syntax errors and duplicate keys with a line", () => {
    assert.throws(() => parseConfigText("model: [1, 2\n", "f.yaml"), /invalid YAML/);
    assert.throws(
      () => parseConfigText("model: {}\nmodel: {}\n", "f.yaml"),
      (err: unknown) => err instanceof ConfigError && /invalid YAML/.test(err.message),
    );
    assert.throws(
      () => parseConfigText("- a\n- b\n", "f.yaml"),
      /expected a mapping at the top level/,
    );
  });

  it("names a missing file", () => {
    assert.throws(
      () => loadConfigFile("no/such/file.yaml"),
      /cannot read config file no\/such\/file\.yaml: no such file/,
    );
  });

  it("suggests only close keys", () => {
    assert.equal(
      didYouMean("colapse_threshold", ["collapse_threshold", "type"]),
      "collapse_threshold",
    );
    assert.equal(didYouMean("zzz", ["collapse_threshold", "type"]), undefined);
  });
});
