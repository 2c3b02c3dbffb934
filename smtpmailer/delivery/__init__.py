"""Delivery: the ESMTP client and the local Maildir capture, behind one DeliveryService."""
