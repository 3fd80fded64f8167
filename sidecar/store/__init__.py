"""The store: Redis (single, TLS or Cluster) or the embedded memory:// store, and its Lua scripts."""
