"""Guards: pure functions over request and response text. No I/O, no aiohttp, no Redis."""
