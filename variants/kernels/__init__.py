"""Attention kernels (see ``variants.kernel.Kernel``): one file each."""
