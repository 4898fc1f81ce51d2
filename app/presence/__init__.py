"""Who is here: "N listening" per track, counted across replicas (tracker.py), from what each
replica writes (table.py) and what the others wrote (roster.py)."""
