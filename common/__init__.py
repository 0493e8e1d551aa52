"""Code shared by every llama-orch daemon: errors, config, gRPC plumbing, logging."""
