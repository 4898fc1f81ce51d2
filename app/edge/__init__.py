"""The replica's edge, in front of the app: HTTP connections (httpprotocol.py: a deadline per
request, a cap on connections), CORS (cors.py) and client addresses (addresses.py)."""
