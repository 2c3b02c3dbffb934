"""sendmail: the drop-in command, and the daemon's socket that takes its messages."""
