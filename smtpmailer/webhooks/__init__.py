"""Webhooks: the events the queue keeps (queue/events.py) told to each ``[Webhook:NAME]``
URL, signed, in order, until it answers 2xx (``service.py``)."""
