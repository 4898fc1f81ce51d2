"""For development only: the embedded PostgreSQL (embedded.py) and the demo data (demo.py)."""
