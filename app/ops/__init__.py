"""What an operator reads: /metrics (prometheus.py), /readyz (readiness.py) and `tracktalk check`
(check.py)."""
