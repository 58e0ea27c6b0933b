"""Built-in implementations, one file each; ``attnbench.variants.registry`` discovers every module here."""
