"""Layer 3: one process runs a generation: engines, the orchestrator, the scheduler, the
in-process pipeline and the engine-built components."""
