"""The live path, from a verified NOTIFY to the bytes on a socket: notices.py (channel names,
signatures, seals), feed.py (the listener's sink) and the parts it routes to: cursors.py (the
tracks' cursors, catch-up, replay), user_lane.py (the users' notifications) and access.py (the
access guard); hub.py (routing), subscriber.py, frames.py, wsprotocol.py (the bytes on a socket),
close_codes.py, throttle.py (typing). app/listener.py, where events enter a replica, belongs to
it too."""
