"""The daemon itself: its service tree (MailerService), reload on SIGHUP, systemd
notification, the statistics line, and how commands find and manage a running daemon
(control, the state_dir lock). Light to import: the CLI's start/stop/status use it."""
