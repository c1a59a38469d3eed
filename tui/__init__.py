"""The Textual app: screens, messages and workers over services/."""
