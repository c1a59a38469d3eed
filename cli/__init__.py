"""Headless front end: ``dcb <subcommand>`` for cron, scripts and CI. Imports services only."""
