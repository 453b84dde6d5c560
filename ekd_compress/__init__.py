"""ekd-compress: essence knowledge distillation for streaming CTC speech recognition."""
__version__ = "0.1.0"
