"""HTTP and WebSocket handlers: each module owns its routes and nothing else."""
