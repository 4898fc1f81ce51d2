"""tracktalk: realtime, time-coded comments for an audio-streaming app."""
