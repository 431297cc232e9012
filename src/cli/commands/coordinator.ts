// `moe-swarm coordinator`: one replica of the BFT registry (issue #6).

import type { Command } from "commander";
import { type CliIO, notBuilt } from "../context.ts";

export function registerCoordinator(program: Command, _io: CliIO): void {
  notBuilt(
    program,
    "coordinator",
    "run one BFT coordinator replica (ORD, IAD, SJC, AMS or SYD)",
    6,
  );
}
