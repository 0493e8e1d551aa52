"""llama-orch worker."""
