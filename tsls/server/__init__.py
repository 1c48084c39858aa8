"""The license server daemon: storage, the batching writer, the socket protocol, the service."""
