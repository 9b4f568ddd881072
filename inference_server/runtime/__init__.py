"""The model runtime: loading, forward pass, calibration, quantization, saliency."""
