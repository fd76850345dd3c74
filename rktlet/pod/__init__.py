"""The rkt pod model: sandbox and app records, their stores, and the engine."""
