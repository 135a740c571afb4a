"""monitors."""
