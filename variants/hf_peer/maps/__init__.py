"""One module per family: the function mapping its layers to a transformers module (``variants.hf_peer.register``)."""
