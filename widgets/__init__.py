"""Reusable Textual widgets; may import services' models, never tui/."""
