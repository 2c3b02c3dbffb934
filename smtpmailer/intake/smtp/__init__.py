"""SMTP submission: the listener, the worker processes that run it, and their channel."""
