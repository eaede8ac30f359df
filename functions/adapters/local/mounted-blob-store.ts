import type { BlobStore, BlobWriter } from "../../ports/blob-store.ts";

/** A key prefix served by another store, under another name there. */
export interface Mount {
  readonly prefix: string;
  readonly store: BlobStore;
  /** What the prefix becomes in the mounted store. */
  readonly target: string;
}

/**
 * One key space over several stores, so a local run sees the layout of the bucket (`seeds/<run>/…`,
 * `images/…`) while the shard and images stay where the user keeps them. The first matching mount wins.
 */
export class MountedBlobStore implements BlobStore {
  readonly #base: BlobStore;
  readonly #mounts: readonly Mount[];

  constructor(base: BlobStore, mounts: readonly Mount[]) {
    this.#base = base;
    this.#mounts = mounts;
  }

  #route(key: string): { store: BlobStore; key: string } {
    for (const mount of this.#mounts) {
      if (key.startsWith(mount.prefix))
        return { store: mount.store, key: mount.target + key.slice(mount.prefix.length) };
    }
    return { store: this.#base, key };
  }

  get(key: string): Promise<Uint8Array> {
    const r = this.#route(key);
    return r.store.get(r.key);
  }
  stream(key: string): AsyncIterable<Uint8Array> {
    const r = this.#route(key);
    return r.store.stream(r.key);
  }
  put(key: string, body: Uint8Array | string, contentType?: string): Promise<void> {
    const r = this.#route(key);
    return r.store.put(r.key, body, contentType);
  }
  writer(key: string, contentType?: string): BlobWriter {
    const r = this.#route(key);
    return r.store.writer(r.key, contentType);
  }
  exists(key: string): Promise<boolean> {
    const r = this.#route(key);
    return r.store.exists(r.key);
  }
  size(key: string): Promise<number | null> {
    const r = this.#route(key);
    return r.store.size(r.key);
  }
  describe(key: string): string {
    const r = this.#route(key);
    return r.store.describe(r.key);
  }
  async list(prefix: string): Promise<string[]> {
    const r = this.#route(prefix);
    const mount = this.#mounts.find((m) => prefix.startsWith(m.prefix));
    const keys = await r.store.list(r.key);
    return mount ? keys.map((k) => mount.prefix + k.slice(mount.target.length)) : keys;
  }
}
