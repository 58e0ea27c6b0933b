"""Built-in low-rank methods, one file each; ``variants.convert.method.METHODS`` discovers them."""
