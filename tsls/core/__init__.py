"""The licensing rules: plain values and functions. No sockets, no database, no clock.

Every function that depends on time takes ``now`` (integer seconds since the Unix epoch, UTC).
"""
