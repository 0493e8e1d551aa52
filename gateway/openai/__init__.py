"""The OpenAI-compatible surface: one router per endpoint, shared serving, protocol models."""
