"""8-bit and 32-bit optimizers (bitsandbytes.optim)."""
