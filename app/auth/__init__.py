"""Who is calling: access tokens checked, whoever issued them.

claims.py (what a verified token says, and why one is refused), hs256.py (tracktalk's own
tokens), verifier.py (`TokenVerifier`: every token a replica is shown), jwks.py and keys.py (the
identity provider's keys), provider.py (the identity provider, read from the environment).
"""
