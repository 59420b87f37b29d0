"""Triton kernels, each beside its autograd wrapper and plain-torch reference."""
