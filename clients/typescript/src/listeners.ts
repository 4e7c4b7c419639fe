/**
 * Listeners of a connection's life (`disconnect`, `reconnecting`,
 * `reconnect`, `error`), shared by the client and its event streams.
 */
export class Listeners<Events> {
  private readonly byType = new Map<keyof Events, Set<(ev: never) => void>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: (ev: Events[K]) => void): () => void {
    let set = this.byType.get(type);
    if (!set) this.byType.set(type, (set = new Set()));
    set.add(listener);
    return () => void set.delete(listener);
  }

  /** Calls every listener of `type`; a listener that throws harms no other. */
  emit<K extends keyof Events>(type: K, ev: Events[K]): void {
    for (const listener of [...(this.byType.get(type) ?? [])] as Array<(ev: Events[K]) => void>) {
      try {
        listener(ev);
      } catch {
        /* a listener's failure is its own */
      }
    }
  }
}
