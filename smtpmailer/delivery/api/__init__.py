"""HTTP mail APIs as relays: the transport (``transport.py``: requests, the classification
of answers, pauses for rate limits), the fields the JSON APIs share (``fields.py``), and one
module per provider that turns a stored message into that API's request. The HTTP client
itself is smtpmailer/httpclient.py, shared with the OAuth2 token endpoints."""
