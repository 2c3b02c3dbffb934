"""HTTP mail APIs as relays: the transport (``transport.py``: requests, the classification
of answers, pauses for rate limits), the HTTP client (``http.py``: treq), and one module per
provider that turns a stored message into that API's request (``sendgrid.py``)."""
