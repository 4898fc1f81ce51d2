"""The benchmark's library (bench/run.py is its entry point): settings, processes, the database,
the writers, the scenarios and the report."""
