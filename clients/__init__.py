"""Thin Triton clients (gRPC, and an HTTP twin) used by the CLI, the UI and the benchmarks."""

from clients.triton import DetailOutput, PortraitOutput, Stage1Output, TritonClient, connect

__all__ = ["DetailOutput", "PortraitOutput", "Stage1Output", "TritonClient", "connect"]
