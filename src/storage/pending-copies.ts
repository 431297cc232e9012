// Markers of tier copies that are queued, running, failed or interrupted, so that `checkpoint list`
// says honestly that a checkpoint's warm/cold copy does not exist yet, and so that GC keeps what a
// pending copy still needs. A marker is a small JSON file in the destination tier,
// `<tier>/pending/<id>.json`, written atomically before the copy is queued and removed only after
// the copy's manifest is written; the copy itself writes its manifest last, so a crash mid-copy
// leaves a marker (reported as interrupted once its process is gone — by pid and start time, so a
// reused pid does not keep it "running") and unlisted blocks that GC sweeps, never a half-written
// checkpoint in the list.

import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { writeFileAtomic } from "./atomic.ts";
import { checkCheckpointId, type TierName, tierNames } from "./manifest.ts";
import { holderAlive } from "./tier-lock.ts";

/** A marker file larger than this is not a marker. */
const markerBytesMax = 4096;

const markerSchema = z.strictObject({
  id: z.string().min(1).max(128),
  from: z.enum(tierNames),
  to: z.enum(tierNames),
  pid: z.number().int().positive(),
  /** The owner's boot id and start time (tier-lock.ts): a reused pid is not the owner. */
  identity: z.string().max(200).optional(),
  queuedAtMs: z.number().finite(),
  state: z.enum(["queued", "copying", "failed"]),
  error: z.string().max(1000).optional(),
});

export type PendingMarker = z.infer<typeof markerSchema>;

export interface PendingCopy extends Omit<PendingMarker, "state"> {
  /** `interrupted`: queued or copying, but the process that owns it is gone. */
  readonly state: PendingMarker["state"] | "interrupted";
}

export function pendingDir(tierDir: string): string {
  return join(tierDir, "pending");
}

function markerPath(tierDir: string, id: string): string {
  checkCheckpointId(id);
  return join(pendingDir(tierDir), `${id}.json`);
}

export function writeMarker(tierDir: string, marker: PendingMarker): void {
  writeFileAtomic(
    markerPath(tierDir, marker.id),
    new TextEncoder().encode(`${JSON.stringify(marker)}\n`),
  );
}

export function removeMarker(tierDir: string, id: string): void {
  rmSync(markerPath(tierDir, id), { force: true });
}

/** The markers of a tier, oldest first; an unreadable marker file is skipped (it holds no data). */
export function listMarkers(tierDir: string, to: TierName): PendingCopy[] {
  const dir = pendingDir(tierDir);
  if (!existsSync(dir)) return [];
  const out: PendingCopy[] = [];
  for (const name of readdirSync(dir)) {
    if (!name.endsWith(".json") || name.startsWith(".")) continue;
    let parsed: PendingMarker;
    try {
      const bytes = readFileSync(join(dir, name));
      if (bytes.length > markerBytesMax) continue;
      parsed = markerSchema.parse(JSON.parse(bytes.toString("utf8")));
    } catch {
      continue;
    }
    if (parsed.to !== to || `${parsed.id}.json` !== name) continue;
    const live = parsed.state === "failed" || holderAlive(parsed);
    out.push({ ...parsed, state: live ? parsed.state : "interrupted" });
  }
  return out.sort((a, b) => a.queuedAtMs - b.queuedAtMs || a.id.localeCompare(b.id));
}
