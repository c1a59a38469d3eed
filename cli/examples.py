"""Examples for every command: each subcommand's ``--help`` ends with its own, ``dcb --help``
lists the first of each. Kept in one table so a test can parse every one of them."""

from __future__ import annotations

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "status": [("dcb status", "containers, volumes, disk and backups at a glance"),
               ("dcb status --json", "the same, for scripts")],
    "config": [("dcb config --show", "every setting and where it came from"),
               ("dcb config --json", "the same as JSON")],
    "backup": [("dcb backup", "every configured database and volume"),
               ("dcb backup --db dart_cloud --json", "one database; the set as JSON"),
               ("dcb backup -q --prune", "from cron: no progress, retention after success")],
    "list": [("dcb list", "every set, newest first; a backup in progress as running"),
             ("dcb list --json", "the same as JSON")],
    "show": [("dcb show 20261126T020000Z", "one set's artifacts, checksums, row counts"),
             ("dcb show 20261126T020000Z --json", "the same as JSON")],
    "verify": [("dcb verify", "the newest complete set: sizes and checksums"),
               ("dcb verify --all --deep -q", "every set, every archive read through")],
    "prune": [("dcb prune --dry-run", "show the plan only"),
              ("dcb prune", "show the plan, ask, remove"),
              ("dcb prune --yes --json -q", "from cron or a script")],
    "restore": [("dcb restore 20261126T020000Z --dry-run", "validate and show the plan"),
                ("dcb restore 20261126T020000Z --db dart_cloud", "one database, asks first")],
    "undo": [("dcb undo", "list the undo points"),
             ("dcb undo restore-20261126T031500Z", "put back what that restore replaced"),
             ("dcb undo --release restore-20261126T031500Z --yes", "free the space it holds")],
    "drill": [("dcb drill", "the newest complete set into a throwaway sandbox"),
              ("dcb drill 20261126T020000Z --json -q", "one set; the result as JSON")],
    "history": [("dcb history", "every run, newest first"),
                ("dcb history --restore 20261126T101500Z-r1", "one restore's incident log")],
    "du": [("dcb du", "the backup dir, largest first"),
           ("dcb du /var/lib/docker/volumes --depth 2", "any directory, two levels"),
           ("dcb du --docker", "what Docker keeps on disk: logs, images, layers, volumes"),
           ("dcb du --docker --json", "the same for scripts (jq '.items[]')")],
    "demo": [("dcb demo", "try dcb on a sandbox stack (made if needed)"),
             ("dcb demo break", "an accident to restore from"),
             ("dcb demo down", "remove the demo stack, its config and backups")],
    "init": [("dcb init", "write ./dcb.toml for the running Compose project"),
             ("dcb init --project shop --output -", "one of several projects; print only")],
    "replicate": [("dcb replicate --all", "every complete set not yet at each destination"),
                  ("dcb replicate 20261126T020000Z --to offsite --json", "one set, one place"),
                  ("dcb replicate --watch --interval 600 -q", "keep copying new sets")],
    "keygen": [("dcb keygen /root/dcb-identity.txt", "a new age identity; prints the recipient"),
               ("dcb keygen --json", "the identity file and the recipient as JSON")],
    "schedule": [("dcb schedule", "the daemon: run the [schedule.NAME] jobs until stopped"),
                 ("dcb schedule --list -n 3", "each job's next three runs"),
                 ("dcb schedule --run nightly --json", "run one job now")],
    "check": [("dcb check", "Nagios-style health: one line, exit 0/1/2/3"),
              ("dcb check -v", "one line per condition"),
              ("dcb check --json", "every finding as JSON")],
    "metrics": [("dcb metrics", "Prometheus text format on stdout"),
                ("dcb metrics --textfile /var/lib/node_exporter/dcb.prom", "for node_exporter"),
                ("dcb metrics --json", "the same samples as JSON")],
    "notify": [("dcb notify", "the notification targets (schemes only) and problems"),
               ("dcb notify --test", "send a test message to every target")],
    "completion": [("dcb completion bash > /etc/bash_completion.d/dcb", "bash, system-wide"),
                   ("dcb completion zsh > ~/.zfunc/_dcb", "zsh (a directory on $fpath)"),
                   ("dcb completion fish > ~/.config/fish/completions/dcb.fish", "fish")],
}


def _rows(rows: list[tuple[str, str]], width: int = 34) -> str:
    """Command and why side by side; a long command gets its own line."""
    w = min(max(len(c) for c, _ in rows), width)
    return "\n".join(f"  {c.ljust(w)}  {why}" if len(c) <= w else f"  {c}\n  {'':{w}}  {why}"
                     for c, why in rows)


def examples_block(command: str) -> str:
    rows = EXAMPLES.get(command, [])
    return "examples:\n" + _rows(rows) if rows else ""


def overview_block() -> str:
    """The first example of each command, for ``dcb --help``."""
    return "examples (each command's --help has more):\n" + _rows(
        [("dcb", "open the full-screen console")] + [v[0] for v in EXAMPLES.values()], 26)
