"""Infrastructure every layer uses: Ray groups, crash-safe checkpoints, run logs, fault injection, paths."""
