// Identity keys of the five coordinators on disk: one ML-DSA-65 seed per region (secret, file mode
// 0600) and one public-key file everyone reads. A replica loads its own seed and all public keys;
// the public keys authenticate both consensus signatures and the hybrid link handshakes.

import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { mlDsa65Keygen, mlDsa65SeedBytes } from "../crypto/signature.ts";
import { regionsInLeaderOrder } from "./types.ts";

export class KeyFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KeyFileError";
  }
}

const publicFile = "public-keys.json";

export function generateClusterKeys(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const pub: Record<string, string> = {};
  for (const region of regionsInLeaderOrder) {
    const seed = randomBytes(mlDsa65SeedBytes);
    writeFileSync(join(dir, `${region}.seed`), `${seed.toString("hex")}\n`, { mode: 0o600 });
    pub[region] = Buffer.from(mlDsa65Keygen(seed).publicKey).toString("base64");
  }
  writeFileSync(join(dir, publicFile), `${JSON.stringify(pub, null, 2)}\n`);
}

export function loadClusterKeys(dir: string, region: string) {
  const seedPath = join(dir, `${region}.seed`);
  const pubPath = join(dir, publicFile);
  if (!existsSync(seedPath) || !existsSync(pubPath))
    throw new KeyFileError(
      `coordinator keys: ${seedPath} or ${pubPath} missing; create them with \`moe-swarm coordinator keygen --out ${dir}\``,
    );
  const seedHex = readFileSync(seedPath, "utf8").trim();
  if (!/^[0-9a-f]{64}$/.test(seedHex))
    throw new KeyFileError(`${seedPath}: expected 64 hex digits (a 32-byte ML-DSA-65 seed)`);
  const pub = JSON.parse(readFileSync(pubPath, "utf8")) as Record<string, unknown>;
  const publicKeys = regionsInLeaderOrder.map((r) => {
    const v = pub[r];
    if (typeof v !== "string") throw new KeyFileError(`${pubPath}: no public key for ${r}`);
    return new Uint8Array(Buffer.from(v, "base64"));
  });
  const { secretKey, publicKey } = mlDsa65Keygen(Buffer.from(seedHex, "hex"));
  const id = regionsInLeaderOrder.indexOf(region as (typeof regionsInLeaderOrder)[number]);
  if (!Buffer.from(publicKey).equals(Buffer.from(publicKeys[id] as Uint8Array)))
    throw new KeyFileError(`${seedPath} does not match ${region}'s key in ${pubPath}`);
  return { secretKey, publicKeys };
}
