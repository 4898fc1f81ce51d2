"""The live path, from a verified NOTIFY to the bytes on a socket: notices.py (channel names,
signatures, seals), feed.py (the listener's sink), hub.py, subscriber.py, frames.py,
wsprotocol.py, close_codes.py, throttle.py. app/listener.py, where events enter a replica,
belongs to it too."""
