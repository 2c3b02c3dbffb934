"""Bounces: delivery status notifications (RFC 3464) to the envelope sender of mail that
failed (``dsn.py`` builds the report, ``notifier.py`` decides when one is sent)."""
