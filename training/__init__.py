"""Training: datasets, the shared loop, evaluation, ONNX export and registration into the model store."""
