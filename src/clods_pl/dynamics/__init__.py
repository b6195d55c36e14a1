"""MeshGraphNets cloth dynamics: features, normalizers, encode-process-decode, message-passing backends."""
