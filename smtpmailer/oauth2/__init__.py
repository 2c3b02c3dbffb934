"""OAuth2 access tokens for relays that take XOAUTH2 or OAUTHBEARER (Gmail, Microsoft 365).

``providers`` knows each provider's endpoints and scopes; ``grants`` builds the token
requests of each flow and reads the answers; ``endpoint`` posts them; ``files`` keeps the
token cache and the refresh token on disk; ``source`` hands tokens to connections, one
refresh at a time; ``authorize`` gets a refresh token the first time (``smtpmailer oauth2
authorize``).
"""
