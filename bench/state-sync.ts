// Cost of state transfer between coordinators (src/consensus/state-sync.ts) for registries of
// growing size: the state digest a replica computes at every checkpoint (canonical JSON + SHA-256),
// its ML-DSA-65 checkpoint signature, the snapshot's size on the wire, and what a lagging replica
// spends to accept one (decode + schema check at the edge, digest recomputation, f + 1 = 2 ML-DSA
// verifications). No peer figure: CometBFT's state sync serves an application's own chunks.
// States above one frame (e.g. the session table at its cap, sessions.ts) go in 1 MiB pieces: the
// last table times serving them and accepting them (decode each piece, assemble, hash, parse,
// schema, certificate, install).
//
// Run: npx tsx bench/state-sync.ts [--reps 5]

import { execSync } from "node:child_process";
import { decodeReplicaMsg, encodeMessage } from "../src/consensus/codec.ts";
import { RegistryStateMachine } from "../src/consensus/registry.ts";
import { sessionsMax } from "../src/consensus/sessions.ts";
import {
  canonicalSessions,
  checkpointDigest,
  StateSync,
  type StateSyncHost,
  stateDigestOf,
} from "../src/consensus/state-sync.ts";
import type { SessionEntry } from "../src/consensus/storage.ts";
import {
  type Block,
  blockIdOf,
  genesisBlock,
  genesisQc,
  type ReplicaMsg,
  type SnapshotMsg,
} from "../src/consensus/types.ts";
import { MlDsa65Signer, MlDsa65Verifier, mlDsa65Keygen } from "../src/crypto/signature.ts";

const repsArg = process.argv.indexOf("--reps");
const reps = repsArg > 0 ? Number(process.argv[repsArg + 1]) : 5;
const chainId = "bench-state-sync";
const keys = Array.from({ length: 5 }, (_, i) => mlDsa65Keygen(new Uint8Array(32).fill(i + 1)));
const verifier = new MlDsa65Verifier(keys.map((k) => k.publicKey));
const signers = keys.map((k, i) => new MlDsa65Signer(i, k.secretKey));

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? 0;
}
function timeMs(fn: () => void): number {
  const samples: number[] = [];
  for (let r = 0; r < reps; r++) {
    const t0 = performance.now();
    fn();
    samples.push(performance.now() - t0);
  }
  return median(samples);
}

function registryOf(nodes: number, experts: number, clients: number) {
  const sm = new RegistryStateMachine();
  const regions = ["ORD", "IAD", "SJC", "AMS", "SYD"];
  for (let n = 0; n < nodes; n++)
    sm.apply(
      {
        kind: "register_node",
        nodeId: `${regions[n % 5]}-${n}`,
        region: regions[n % 5],
        gpuType: "a10",
        address: `10.0.${n >> 8}.${n & 255}:7000`,
      },
      1_000,
    );
  for (let e = 0; e < experts; e++)
    sm.apply(
      {
        kind: "set_placement",
        expert: `L${e >> 6}.E${e & 63}`,
        nodeIds: [0, 1, 2].map((k) => {
          const n = (e + k * 7) % nodes;
          return `${regions[n % 5]}-${n}`;
        }),
      },
      2_000,
    );
  const sessions: SessionEntry[] = Array.from({ length: clients }, (_, c) => ({
    clientId: `client-${c.toString(16).padStart(16, "0")}`,
    seq: 1 + c,
    result: { ok: true },
    atMs: 1_000 + c,
  }));
  return { registry: sm.snapshot(), sessions };
}

const block = (() => {
  const fields = {
    parentId: genesisBlock(chainId).id,
    round: 9,
    height: 512,
    author: 0,
    timestampMs: 1,
    payload: [],
    qc: { ...genesisQc(chainId), height: 511 },
  };
  return { id: blockIdOf(chainId, fields), ...fields } as Block;
})();

/** A StateSync of replica `id` with the bench's keys and cadence; what a case needs is overridden. */
function syncOf(id: number, host: Partial<StateSyncHost> = {}): StateSync {
  return new StateSync({
    host: {
      id,
      chainId,
      signer: signers[id] as MlDsa65Signer,
      verifier,
      send: () => {},
      committed: () => genesisBlock(chainId),
      committedBlock: () => undefined,
      state: () => ({ registry: new RegistryStateMachine().snapshot(), sessions: [] }),
      install: () => {},
      commitCertified: () => false,
      reject: (_f, r) => {
        throw new Error(r);
      },
      evidence: () => {},
      info: () => {},
      ...host,
    },
    everyBlocks: 512,
    lagBlocks: 64,
    retryMs: 1_000,
  });
}

const lagging = syncOf(4);

let load = "";
try {
  load = execSync("uptime", { encoding: "utf8" }).trim();
} catch {}
console.log(`state transfer cost (median of ${reps}); ${load}`);
console.log(
  "nodes | experts | sessions | snapshot KiB | digest ms | sign ms | encode ms | accept ms (decode+schema+digest+2 verify)",
);
for (const [nodes, experts, clients] of [
  [15, 384, 100],
  [100, 2_048, 1_000],
  [500, 8_192, 5_000],
] as const) {
  const { registry, sessions } = registryOf(nodes, experts, clients);
  const { digest } = stateDigestOf(registry, sessions);
  const digestMs = timeMs(() => stateDigestOf(registry, sessions));
  const message = checkpointDigest(chainId, block.height, block.id, digest);
  const signMs = timeMs(() => (signers[0] as MlDsa65Signer).sign(message));
  const msg: SnapshotMsg = {
    type: "snapshot",
    block,
    registry,
    sessions,
    stateDigest: digest,
    sigs: [0, 1].map((a) => ({ author: a, sig: (signers[a] as MlDsa65Signer).sign(message) })),
  };
  let bytes: Uint8Array = new Uint8Array();
  const encodeMs = timeMs(() => {
    bytes = encodeMessage(msg);
  });
  const acceptMs = timeMs(() => {
    const d = decodeReplicaMsg(bytes);
    if (!d.ok || d.value.type !== "snapshot") throw new Error(d.ok ? "type" : d.reason);
    const bad = lagging.checkSnapshot(d.value);
    if (bad) throw new Error(bad);
  });
  console.log(
    `${nodes} | ${experts} | ${clients} | ${(bytes.length / 1024).toFixed(0)} | ${digestMs.toFixed(2)} | ${signMs.toFixed(2)} | ${encodeMs.toFixed(2)} | ${acceptMs.toFixed(2)}`,
  );
}

console.log(
  "\nlarge states in 1 MiB pieces: nodes | experts | sessions | state MiB | pieces | serve ms | accept ms (decode pieces + assemble + SHA-256 + parse + schema + 2 verify + install)",
);
for (const [nodes, experts, clients] of [
  [500, 8_192, sessionsMax],
  [1_000, 16_384, sessionsMax],
] as const) {
  const { registry, sessions } = registryOf(nodes, experts, clients);
  const ordered = canonicalSessions(sessions);
  const { digest } = stateDigestOf(registry, ordered);
  const sent: ReplicaMsg[] = [];
  const server = syncOf(0, {
    send: (_to, m) => sent.push(m),
    committed: () => block,
    state: () => ({ registry, sessions: ordered }),
  });
  server.onCommitted(block, false);
  server.onMessage(
    1,
    {
      type: "checkpoint",
      height: block.height,
      blockId: block.id,
      stateDigest: digest,
      author: 1,
      sig: (signers[1] as MlDsa65Signer).sign(
        checkpointDigest(chainId, block.height, block.id, digest),
      ),
    },
    0,
  );
  let frames: Uint8Array[] = [];
  const serveMs = timeMs(() => {
    sent.length = 0;
    server.onMessage(4, { type: "catchup", height: 0 }, 0);
    frames = sent.map((m) => encodeMessage(m));
  });
  let installed = 0;
  const acceptMs = timeMs(() => {
    const receiver = syncOf(4, {
      verifier: new MlDsa65Verifier(keys.map((k) => k.publicKey)), // no cache hits
      install: () => {
        installed += 1;
      },
    });
    for (const f of frames) {
      const d = decodeReplicaMsg(f);
      if (!d.ok || d.value.type !== "snapshot-chunk") throw new Error(d.ok ? "type" : d.reason);
      receiver.onMessage(0, d.value, 0);
    }
  });
  if (installed !== reps) throw new Error(`installed ${installed} of ${reps}`);
  const total = frames.reduce((a, f) => a + f.length, 0);
  console.log(
    `${nodes} | ${experts} | ${clients} | ${(total / 1024 / 1024).toFixed(1)} | ${frames.length} | ${serveMs.toFixed(0)} | ${acceptMs.toFixed(0)}`,
  );
}
