"""Benchmarks beside the PyTorch/transformers stack (`python -m benchmarks.<name>`).

Results are printed as JSON lines and appended to `benchmarks/RESULTS.md`.
Nothing here needs TensorFlow, SeqIO or gin except `benchmarks.input_pipeline`.
"""
