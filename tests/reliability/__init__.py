"""Reliability: shutdown, signals, fork, and fault injection (see README.md here)."""
