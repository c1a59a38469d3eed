"""Operations: running by itself and saying when it fails.

The schedule daemon (``schedule``, its cron maths in ``cron``, its jobs in ``jobs``, its
heartbeat file in ``heartbeat``), health checks (``check``), Prometheus metrics (``metrics``),
notifications (``notify``) and the history screen's figures (``history_stats``).
"""
