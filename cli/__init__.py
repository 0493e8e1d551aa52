"""The `llama-orch` command."""
