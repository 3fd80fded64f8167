"""ai-security-sidecar: a security sidecar for OpenAI-compatible LLM traffic."""

__version__ = "0.1.0"
