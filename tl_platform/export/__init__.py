"""Compression and export: ONNX FP32 and INT8 graphs, the gates they pass before deployment, and their runtime."""
