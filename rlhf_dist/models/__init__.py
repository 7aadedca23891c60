"""Models: loading, sequence maths and padding, weight views, saving, LoRA, the frozen reference and
the tiny local model."""
