"""Triton: the adapters' shared I/O, the `denoise` job and step scheduler, cancellation, metrics, the torch models'
start-up, and the supervised server."""
