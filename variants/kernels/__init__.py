"""Attention kernels (see ``attnbench.variants.kernel.Kernel``): one file each."""
