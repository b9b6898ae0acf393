"""The HTTP layer: parses, calls one gateway operation, maps errors to the envelope."""
