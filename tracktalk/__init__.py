"""tracktalk's Python client, for services and bots: `tracktalk.client` (the live messages of a
track or of topics, resumed across drops; the HTTP API). docs/client.md shows it at work."""
