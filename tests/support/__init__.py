"""What the tests share, one module per thing it provides: waiting.py (waits with a deadline),
processes.py (replicas and ports), sockets.py (WebSocket clients), seed.py (seed data),
proxies.py (nginx, a TCP proxy), reaper.py (launched servers die with the run), clusters.py
(PostgreSQL servers of the tests' own, which do too), metrics.py (/metrics), browser.py (chromium), fakes.py (the
in-process stand-ins of the unit tests), idp.py (an identity provider)."""
