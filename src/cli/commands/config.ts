// `moe-swarm config validate|show`: check a config file and print the resolved config.

import { readFileSync } from "node:fs";
import type { Command } from "commander";
import {
  type LoadedConfig,
  loadConfig,
  parseConfigText,
  renderConfig,
  resolveConfig,
} from "../../config/load.ts";
import { profiles } from "../../config/schema.ts";
import { type CliIO, UsageError } from "../context.ts";

function load(file: string | undefined): LoadedConfig {
  if (file === "-") return parseConfigText(readFileSync(0, "utf8"), "<stdin>");
  return loadConfig(file);
}

export function registerConfig(program: Command, io: CliIO): void {
  const config = program
    .command("config")
    .description("validate and inspect the swarm's YAML configuration");

  config
    .command("validate")
    .description("check a config file against the schema; every problem names its key")
    .argument(
      "[file]",
      'YAML file ("-" for stdin); defaults to --config, else the built-in local profile',
    )
    .action((file: string | undefined, _opts: unknown, cmd: Command) => {
      const path = file ?? cmd.optsWithGlobals<{ config?: string }>().config;
      const { config: cfg } = load(path);
      const tiers = cfg.expert_topology.hierarchical_layers
        .map((l) => `${l.name} ${l.experts_per_region}×${l.activation}`)
        .join(", ");
      io.out(
        `${path ?? "built-in defaults"}: valid (profile ${cfg.profile}; ${cfg.regions.length} regions; tiers: ${tiers})`,
      );
    });

  config
    .command("show")
    .description("print the resolved config (file over the profile's defaults) as YAML or JSON")
    .argument(
      "[file]",
      'YAML file ("-" for stdin); defaults to --config, else the built-in local profile',
    )
    .option(
      "-p, --profile <name>",
      `show a profile's defaults (${profiles.join(", ")}) instead of a file`,
    )
    .option("--json", "print JSON with units resolved to base units (seconds, bytes, bits/s)")
    .action(
      (file: string | undefined, opts: { profile?: string; json?: boolean }, cmd: Command) => {
        let loaded: LoadedConfig;
        if (opts.profile !== undefined) {
          if (file !== undefined)
            throw new UsageError("config show: give either a file or --profile, not both");
          loaded = resolveConfig({ profile: opts.profile }, `--profile ${opts.profile}`);
        } else {
          loaded = load(file ?? cmd.optsWithGlobals<{ config?: string }>().config);
        }
        io.out(
          opts.json
            ? JSON.stringify(
                loaded.config,
                (_k, v) => (v === Number.POSITIVE_INFINITY ? "Infinity" : v),
                2,
              )
            : renderConfig(loaded.config),
        );
      },
    );
}
