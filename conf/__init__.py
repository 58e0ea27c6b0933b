"""attnbench's Hydra configuration (yaml), shipped in the wheel as the package ``attnbench.conf``."""
