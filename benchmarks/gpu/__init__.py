"""The parts of benchmarks/gpu_check.py: its steps, their report tables, the demo probe and the pytest plugin."""
