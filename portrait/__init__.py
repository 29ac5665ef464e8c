"""Face-identity portrait generation served by NVIDIA Triton: the library behind the models."""
