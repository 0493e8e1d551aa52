"""llama-orch pool_manager."""
