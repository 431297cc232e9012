// `moe-swarm up|node|gateway`: the swarm data plane (issue #5).

import type { Command } from "commander";
import { type CliIO, notBuilt } from "../context.ts";

export function registerSwarm(program: Command, _io: CliIO): void {
  notBuilt(
    program,
    "up",
    "start the whole local swarm: coordinators, expert nodes per region, gateway, dashboard",
    5,
  );
  notBuilt(program, "node", "run one expert node hosting a set of experts", 5);
  notBuilt(program, "gateway", "run the gateway: trunk, expert dispatch and the HTTP API", 5);
}
