"""Generated protobuf code (``make protos`` from ``protos/``). Never edit by hand."""
