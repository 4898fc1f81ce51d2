"""The database: the pool and the SQL files (db.py), and every query the app makes, one module
per thing it reads or writes. Nothing here knows of sockets or HTTP."""
