"""One module per family: the function mapping its layers to a transformers module
(``attnbench.variants.hf_peer.register``)."""
