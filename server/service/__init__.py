"""The gRPC evaluation service: helixfed.proto, its generated stubs, the server and a client command."""
