"""Dispatch: the poller that leases due mail, and the Dispatcher that commits each turn
(new messages and delivery outcomes together) and hands new mail straight to delivery."""
