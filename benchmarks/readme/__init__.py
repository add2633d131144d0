"""README figures rendered from the committed files they come from (benchmarks/readme_figures.py drives it)."""
