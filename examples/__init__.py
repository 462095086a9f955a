"""Runnable examples of Tether."""
