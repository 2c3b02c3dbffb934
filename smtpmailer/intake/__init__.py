"""The ways in: every path by which mail reaches the queue, and the refusals they share.

- ``checks``: the checks every way in makes before a commit (size, addresses).
- ``refusals``: the one vocabulary of refusals and its answers for each way in.
- ``sendmail/``: the ``sendmail`` command, and the daemon's socket it hands messages to.
- ``smtp/``: the SMTP submission listener, its worker processes and their channel.
- ``http``: ``POST /v1/messages`` on the status service.

Nothing here imports Twisted at module level on the sendmail command's path.
"""
