"""Device kernels for the ``torch.ops.bitsandbytes`` registry.

``native`` serves CPU and CUDA through the C ABI of the native libraries; both devices share one
Python adapter because the per-device differences (supported block sizes, kernels) live in the
libraries' own support tables.
"""
