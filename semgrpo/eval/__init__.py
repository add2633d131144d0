"""Evaluation: `bin/evaluate.py` (cli -> run), `bin/transfer.py` (transfer), and the live alignment-tax meter
the trainer runs (tax_meter). Metrics in metrics.py and cmrc.py, OOD NLL/KL in ood.py, the LLM judge in
judge.py, the report in report.py."""
