"""Built-in low-rank methods, one file each; ``attnbench.variants.convert.method.METHODS`` discovers them."""
