"""Apps the tests serve."""
