"""Who is calling: API key format, key records in Redis, verification off the hot path."""
