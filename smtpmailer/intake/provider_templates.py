"""Provider templates: a submission that names an API provider's own template
(``provider_template``) and its variables, instead of a body. The queue keeps a message
that carries the template id and the variables (message.py's PROVIDER_TEMPLATE); the API
relay passes them on. Only relays that can are allowed on such a message's path: it is
refused at intake otherwise, never sent as a blank message."""

from __future__ import annotations

from typing import Any

from smtpmailer.config import Config
from smtpmailer.intake.refusals import MessageError
from smtpmailer.message import normalize_address

# The API providers whose template feature the relays use.
WITH_TEMPLATES = ("sendgrid", "postmark", "mailgun", "brevo", "mailjet")


def check_route(config: Config, sender: str) -> None:
    """Refuses unless every relay that mail from ``sender`` may go to can send a provider
    template (a failover to an SMTP relay could not)."""
    address = normalize_address(sender, "sender")
    relays = {relay.name: relay for relay in config.relays}
    for name in config.relays_for(address):
        relay: Any = relays[name]
        provider = getattr(relay, "provider", None)
        if relay.kind != "api" or provider not in WITH_TEMPLATES:
            what = f"provider {provider}" if provider else relay.kind
            able = ", ".join(WITH_TEMPLATES)
            raise MessageError(
                f"provider_template needs an API relay with templates ({able}): mail from "
                f"{address} may go to relay {name} ({what}), which has none"
            )
