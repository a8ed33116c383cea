"""Quantized modules (bitsandbytes.nn). The 4-bit and 8-bit layers build on bitsandbytes.functional."""
