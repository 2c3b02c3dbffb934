"""Delivery: routing each message along the relays, a pool per relay, and the transports
behind one seam (``transport.py``): ESMTP (``smtp/``) and the Maildir capture."""
