"""Screens of the dcb console."""
