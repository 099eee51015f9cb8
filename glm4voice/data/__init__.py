"""Training data: samples in the exact layouts the model reads at inference."""
