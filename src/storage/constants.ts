// Limits and defaults of the content-addressed store, in one place (TigerBeetle style): every
// bound a reader of untrusted bytes relies on is named here, units last in names.

/** FastCDC min and max chunk sizes are avg / chunkSizeSpread and avg · chunkSizeSpread. */
export const chunkSizeSpread = 4;
/** Smallest average chunk size accepted (tests use small sizes; below this the index dominates). */
export const chunkBytesAvgMin = 64;
/** Largest chunk a store accepts: the on-disk record stores the plaintext length as a u32. */
export const chunkBytesMax = 64 * 1024 * 1024;
/** Largest shard a checkpoint holds in memory at once (a Node Buffer tops out near 4 GiB). */
export const shardBytesMax = 2 * 1024 * 1024 * 1024;
/**
 * Largest raw leaf of a shard's DAG. kubo refers blocks over 1 MiB over bitswap (and `ipfs dag
 * import` rejects them by default), so a FastCDC chunk longer than this (the production average is
 * 4 MB, the maximum 16 MB) is stored as several consecutive leaves of at most this size, cut at
 * fixed offsets from the chunk's start: the cut is a function of the chunk's bytes, so dedup of
 * whole chunks still finds every repeat. https://github.com/ipfs/kubo/blob/master/docs/config.md
 */
export const leafBytesMax = 1024 * 1024;
/** Links per dag-pb file node, as kubo's balanced layout (174 links ≈ one 256 KiB node). */
export const dagLinksMax = 174;
/** Depth of a shard's DAG a reader follows before calling the DAG malformed. */
export const dagDepthMax = 16;
/** Bytes of decoded blocks the LRU hot cache of a block store keeps. */
export const hotCacheBytesMax = 256 * 1024 * 1024;
/** A CAR section (CID + block) larger than this is rejected before it is read. */
export const carSectionBytesMax = chunkBytesMax + 1024;
/** A CAR header larger than this is rejected. */
export const carHeaderBytesMax = 64 * 1024;
/** Longest chain of XOR deltas (a delta whose base is a delta ...) before a block is stored whole. */
export const deltaChainMax = 4;
/** Bases one delta record may name (the base range may span several chunks). */
export const deltaBasesMax = 64;
/** Words sampled when estimating the similarity of a chunk and its candidate base. */
export const similaritySampleWordsMax = 4096;
/** Chunks shorter than this are not indexed for similarity (too few sampled substrings). */
export const similarityBytesMin = 256;
/** Checkpoints of each tier that retention never deletes, however old. */
export const keepLatestMin = 1;
/** Shard names are UnixFS directory entry names: no '/', no NUL, at most this many bytes. */
export const shardNameBytesMax = 255;
/** Checkpoint ids are file names: letters, digits, '.', '_', '-', at most this many characters. */
export const checkpointIdCharsMax = 128;
