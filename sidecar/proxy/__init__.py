"""The proxy listener: the OpenAI-compatible surface and the request's way through the sidecar."""
