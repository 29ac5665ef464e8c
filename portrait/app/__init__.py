"""What people run: the CLI, productions, the store, sweeps."""
