"""Shipping a finished run: `export` (timm, Hugging Face, ONNX, TorchScript folders, each checked for
parity with the run) and `serve` (an HTTP prediction server with a page)."""
