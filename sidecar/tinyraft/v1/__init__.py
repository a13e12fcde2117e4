"""Generated gRPC/protobuf stubs of proto/tinyraft/v1 (scripts/gen-proto). Never edit by hand."""
