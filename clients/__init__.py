"""Thin Triton clients (gRPC, and an HTTP twin) used by the CLI, the UI and the benchmarks."""

from clients.triton import DetailOutput, Stage1Output, TritonClient, connect

__all__ = ["DetailOutput", "Stage1Output", "TritonClient", "connect"]
