"""Delivery over ESMTP: our pipelining client, its AUTH mechanisms, TLS, and the transport."""
