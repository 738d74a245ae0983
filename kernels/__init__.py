"""Attention kernels of sparge-diffusers: Triton kernels with their launchers, and `reference`, the pure-PyTorch
ground truth each kernel is tested against. Nothing here imports the integration layer; Triton is imported only
by the modules that launch kernels, so importing this package works without a GPU.
"""
