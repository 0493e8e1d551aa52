"""llama-orch orchestrator."""
