"""mini pageserver: a Neon-style pageserver in Python."""
