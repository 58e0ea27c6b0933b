"""Built-in implementations, one file each; ``variants.registry`` discovers every module here."""
